"""Results records and the docs tables rendered from them (s2policy.evaluation.publish)."""

import json

import pytest

from s2policy.evaluation import publish
from tests.evaluation.test_report import SYNTHETIC, result, write_runs


@pytest.fixture
def records(tmp_path, monkeypatch):
    """A record made from synthetic runs, in a records folder of its own."""
    monkeypatch.setattr(publish, "RECORDS", tmp_path / "data")
    runs = write_runs(tmp_path / "runs", SYNTHETIC + [result("vit_t", [224], 0, 3, task="place")])
    publish.run(
        publish.PublishConfig(
            action="record", name="syn", runs=[str(runs)], commands=["python train_policy.py -m"]
        )
    )
    return tmp_path


def test_a_record_keeps_counts_and_commands_not_rates(records):
    record = json.loads((records / "data" / "syn.json").read_text())
    assert record["commands"] == ["python train_policy.py -m"] and record["date"]
    s2 = next(r for r in record["rows"] if r["scales"] == "(224, 448)")
    assert (s2["successes"], s2["episodes"], s2["seeds"]) == (16, 20, 2)
    assert "success" not in s2 and "ci95_low" not in s2  # recomputed when rendered


def test_tables_are_rendered_from_the_counts(records):
    page = "<!-- results: syn view=tasks tasks=cube_pick,place -->\nstale\n<!-- /results -->\n"
    text = publish.render_page(page)
    assert "| encoder | weights | recipe | cube_pick | place |" in text
    # vit_t (224): 10/20 on cube picking, 3/10 on place (fewer episodes than usual: marked)
    assert "50.0 % [29.9, 70.1]" in text and "30.0 % [10.8, 60.3] (10 episodes)" in text
    assert "80.0 % [58.4, 91.9]" in text and "| – |" in text  # S² ran on cube picking only
    assert "stale" not in text
    ladder = publish.render_page(page.replace("view=tasks", "view=ladder"))
    assert "S² `vit_t` (224, 448)" in ladder and "GFLOPs per image" in ladder
    assert "Measured" in publish.render_page(page.replace("view=tasks", "view=provenance"))


def test_a_page_that_disagrees_with_its_record_is_found(records):
    page = records / "page.md"
    page.write_text("<!-- results: syn view=success -->\n| old |\n<!-- /results -->\n")
    assert publish.stale_pages([page]) == [page]
    page.write_text(publish.render_page(page.read_text()))
    assert publish.stale_pages([page]) == []


@pytest.mark.parametrize(
    ("block", "message"),
    [
        ("<!-- results: syn view=pie -->\n<!-- /results -->", "unknown results view 'pie'"),
        ("<!-- results: nope -->\n<!-- /results -->", r"no results record .*nope.json; records"),
    ],
)
def test_bad_blocks_are_one_sentence(records, block, message):
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        publish.render_page(block, "page.md")


def test_record_needs_its_runs_and_commands():
    with pytest.raises(ValueError, match="needs name=..., runs=.* and commands="):
        publish.PublishConfig(action="record", name="x")


def test_committed_records_are_well_formed():
    from s2policy.evaluation.ladder import BLIND_LABEL, ORACLE_LABEL

    names = sorted(p.stem for p in publish.RECORDS.glob("*.json"))
    assert names, "no committed results records"
    for name in names:
        record = publish.load_record(name)
        assert record["commands"] and record["date"] and record["commit"], name
        for r in record["rows"]:
            assert set(publish.KEEP) <= set(r), (name, set(publish.KEEP) - set(r))
            assert 0 <= r["successes"] <= r["episodes"], (name, r)
            if r["scales"] == "-":  # the floor and the ceiling, as the report names them
                assert r["backbone"] in (BLIND_LABEL, ORACLE_LABEL), (name, r["backbone"])
