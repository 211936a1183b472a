"""The retrieval index: nearest titles, leave-one-out, persistence."""

from __future__ import annotations

import logging

import pytest

from productdesc.errors import UserError
from productdesc.retrieval import Analyzer, RetrievalIndex, normalize_title

CATALOGUE = [
    {"uid": "1", "title": "Girls Ballet Tutu Neon Pink", "content": "3 layer ballet tutu"},
    {"uid": "2", "title": "Stainless Steel Kitchen Knife Set", "content": "six knives"},
    {"uid": "3", "title": "Wireless USB Mouse, Black", "content": "a quiet mouse"},
    {"uid": "4", "title": "The Prophet (Hardcover)", "content": "Gibran's poems"},
    {"uid": "5", "title": "Girls Ballet Tutu Blue", "content": "blue tutu, 12 inches"},
    {"uid": "6", "title": "Soft Cotton Baby Blanket", "content": "warm and soft"},
]

ANALYZERS = [Analyzer(), Analyzer(kind="char"), Analyzer(kind="word", stopwords=True)]


@pytest.fixture(scope="module", params=ANALYZERS, ids=lambda a: f"{a.kind}-stop{a.stopwords}")
def index(request: pytest.FixtureRequest) -> RetrievalIndex:
    return RetrievalIndex.build(CATALOGUE, analyzer=request.param, show_progress=False)


def test_finds_the_planted_neighbour(index: RetrievalIndex):
    hits = index.search("pink tutus for girls' ballet", k=2)
    assert [h.uid for h in hits] == ["1", "5"]
    assert hits[0].title == "Girls Ballet Tutu Neon Pink"
    assert hits[0].content == "3 layer ballet tutu"
    assert hits[0].score > hits[1].score > 0
    assert index.search("cordless mouse")[0].uid == "3"
    assert index.answer(["stainless knives set", "the prophet"]) == ["six knives", "Gibran's poems"]


def test_exclude_by_uid_and_by_normalised_title(index: RetrievalIndex):
    title = "Girls Ballet Tutu Neon Pink"
    assert index.search(title, exclude_uid="1")[0].uid == "5"
    assert index.search(title, exclude_title="girls'  BALLET tutu, neon pink!")[0].uid == "5"
    batch = index.search_batch([title, "Soft Cotton Baby Blanket"], 1, exclude_uids=["1", "6"])
    assert batch[0][0].uid == "5"
    assert batch[1][0].uid != "6"


def test_k_larger_than_the_index(index: RetrievalIndex):
    hits = index.search("tutu", k=50)
    assert len(hits) == len(CATALOGUE) == len(index)
    assert len(index.search("tutu", k=50, exclude_uid="1")) == len(CATALOGUE) - 1


def test_a_query_sharing_no_term_still_answers(index: RetrievalIndex):
    hits = index.search("zzzz qqqq", k=1)
    assert len(hits) == 1 and hits[0].score == 0.0
    assert index.search("", k=1)[0].score == 0.0


def test_exclusion_past_the_first_fetch():
    # eleven copies of one product under different uids: excluding the title must skip them
    # all, more than the first over-fetch, and still find the other product
    records = [{"uid": str(i), "title": "Red Mug", "content": "a mug"} for i in range(11)]
    records.append({"uid": "x", "title": "Red Mug Holder", "content": "holds mugs"})
    index = RetrievalIndex.build(records, show_progress=False)
    assert [h.uid for h in index.search("red mug", k=1, exclude_title="Red Mug")] == ["x"]
    assert index.search("red mug", k=3, exclude_title="red mug") == index.search(
        "red mug", k=1, exclude_title="red mug"
    )


def test_save_load_round_trip(tmp_path, index: RetrievalIndex):
    path = index.save(tmp_path / "idx")
    loaded = RetrievalIndex.load(path)
    assert loaded.analyzer == index.analyzer
    assert len(loaded) == len(index)
    for query in ("pink tutu", "the prophet", "black mouse", "nothing matches zz"):
        assert loaded.search(query, k=3) == index.search(query, k=3)
    assert loaded.search("Girls Ballet Tutu Neon Pink", exclude_uid="1")[0].uid == "5"


def test_save_replaces_an_index_but_not_other_directories(tmp_path):
    small = RetrievalIndex.build(CATALOGUE[:2], show_progress=False)
    path = small.save(tmp_path / "idx")
    RetrievalIndex.build(CATALOGUE, show_progress=False).save(path)
    assert len(RetrievalIndex.load(path)) == len(CATALOGUE)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["idx"]  # no temporary left behind
    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    with pytest.raises(UserError, match="not a retrieval index"):
        small.save(other)
    assert (other / "keep.txt").read_text() == "mine"


def test_load_errors_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="no retrieval index"):
        RetrievalIndex.load(tmp_path)
    (tmp_path / "index.json").write_text('{"format": "something-else/9"}')
    with pytest.raises(UserError, match="rebuild"):
        RetrievalIndex.load(tmp_path)


def test_unusable_records_are_counted(caplog):
    records = [*CATALOGUE, {"uid": "7", "title": "", "content": "x"}, {"title": "No content"}]
    with caplog.at_level(logging.WARNING, logger="productdesc.retrieval"):
        index = RetrievalIndex.build(records, show_progress=False)
    assert len(index) == len(CATALOGUE)
    assert "skipped 2 record(s)" in caplog.text
    with pytest.raises(UserError, match="no record"):
        RetrievalIndex.build([{"title": "", "content": ""}], show_progress=False)


def test_records_without_uid_are_kept():
    index = RetrievalIndex.build(
        [{"uid": None, "title": "The Prophet", "content": "poems"}], show_progress=False
    )
    assert index.search("prophet")[0].uid is None


def test_normalize_title_and_analyzer():
    assert normalize_title("Girls' Ballet  Tutu (Pink)") == normalize_title(
        "girls ballet tutu pink"
    )
    assert Analyzer()("Running Shoes for Kids") == ["run", "shoe", "for", "kid"]
    assert Analyzer(stopwords=True)("Running Shoes for Kids") == ["run", "shoe", "kid"]
    assert Analyzer(kind="char", ngram_range=(3, 3))("TV") == [" tv", "tv "]
    with pytest.raises(ValueError, match="ngram_range"):
        Analyzer(kind="char", ngram_range=(5, 3))


def test_real_sample_leave_one_out(real_sample):
    import orjson

    records = [orjson.loads(line) for line in real_sample.read_bytes().splitlines()[:200]]
    for i, record in enumerate(records):
        record["uid"] = str(i)
    index = RetrievalIndex.build(records, show_progress=False)
    titles = [r["title"] for r in records]
    hits = index.search_batch(
        titles, 1, exclude_uids=[r["uid"] for r in records], exclude_titles=titles
    )
    assert all(
        normalize_title(h[0].title) != normalize_title(t) for h, t in zip(hits, titles, strict=True)
    )
    # without exclusion every title finds itself (or an identical title) first
    hits = index.search_batch(titles, 1)
    assert all(
        normalize_title(h[0].title) == normalize_title(t) for h, t in zip(hits, titles, strict=True)
    )


def test_ties_rank_in_index_order():
    records = [{"uid": str(i), "title": "Red Mug", "content": f"mug {i}"} for i in range(5)]
    records.insert(2, {"uid": "b", "title": "Blue Plate", "content": "plate"})
    index = RetrievalIndex.build(records, show_progress=False)
    assert [h.uid for h in index.search("red mug", k=6)] == ["0", "1", "2", "3", "4", "b"]
    assert [h.uid for h in index.search("unrelated words", k=3)] == ["0", "1", "b"]


def test_ties_at_the_cut_go_to_the_earlier_record():
    import numpy as np

    from productdesc.retrieval.index import _top

    scores = np.array([0.0, 2.0, 1.0, 2.0, 1.0, 1.0, 0.0, 1.0])
    assert _top(scores, 1).tolist() == [1]
    assert _top(scores, 3).tolist() == [1, 3, 2]
    assert _top(scores, 4).tolist() == [1, 3, 2, 4]
    # each answer is a prefix of the longer ones: search(t, 1) agrees with search(t, k)[0]
    assert all(_top(scores, k).tolist() == _top(scores, 8).tolist()[:k] for k in range(1, 9))
