"""The data-preparation stages against known answers: normalisation, heuristic quality, the quality
classifier, the safety word list, exact and MinHash dedup, n-gram decontamination, and a small planted
corpus that all of them together must clean (contamination >= 99% and near-duplicates >= 95% removed,
< 1% of clean documents lost)."""

import json
import multiprocessing
import random
import sysconfig
from pathlib import Path

import numpy as np
import pytest

from gemini_jax.data.prepare.classifier import ClassifierFilter, QualityClassifier
from gemini_jax.data.prepare.decontaminate import Decontaminator, eval_sets
from gemini_jax.data.prepare.dedup import ExactDedup, NearDedup, lsh_bands, signature
from gemini_jax.data.prepare.hashing import hash_grams, hash_words, words
from gemini_jax.data.prepare.normalize import normalize_text
from gemini_jax.data.prepare.quality import HeuristicQuality
from gemini_jax.data.prepare.safety import SafetyFilter, shipped_words

PROSE = ("The history of the river valley is long and varied. Farmers settled along the banks of the "
         "river, and over the centuries they built villages that grew into towns with markets and "
         "schools. Trade with the coast brought new ideas to the valley, and the towns that were best "
         "placed on the roads became the largest. Today the valley is known for its orchards and for "
         "the old stone bridges that still carry traffic across the water.\n\nVisitors come in the "
         "spring to see the blossom, and in the autumn to taste the cider that the farms have made "
         "with the same methods for generations.")


# --- normalize ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("a  b\t\tc", "a b c"),
    ("one\r\ntwo\rthree", "one\ntwo\nthree"),
    ("x\x00y\x07z\u200b!", "xyz!"),
    ("trailing   \nspaces\t\n", "trailing\nspaces\n"),
    ("a\n\n\n\n\n\nb", "a\n\n\nb"),
    ("a\n \n\t\n  \n \nb", "a\n\n\nb"),
    ("cafe\u0301", "caf\u00e9"),
    ("    indented  =  1\n\tkept", "    indented = 1\n\tkept"),
])
def test_normalize_known_answers(text, expected):
    assert normalize_text(text) == expected


def test_normalize_is_idempotent():
    rng = random.Random(0)
    alphabet = "ab \t\n\r\x00\x0b\u00a0e\u0301\u200b."
    for _ in range(300):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randrange(40)))
        once = normalize_text(text)
        assert normalize_text(once) == once, repr(text)


# --- quality -----------------------------------------------------------------------------------------

def test_quality_keeps_ordinary_prose():
    assert HeuristicQuality()(PROSE) is None
    assert HeuristicQuality()(_prose(0, 300)) is None


def _prose(seed: int, count: int) -> str:
    """Sentences of made-up words with English stop words: varied enough for every repetition rule."""
    rng = random.Random(seed)
    stems = ["".join(rng.choice("bcdfghklmnprstvw") + rng.choice("aeiou") for _ in range(rng.randint(2, 4)))
             for _ in range(400)]
    glue = ["the", "of", "and", "to", "with", "that", "a", "in"]
    tokens = [rng.choice(glue) if i % 3 == 0 else rng.choice(stems) for i in range(count)]
    return " ".join(tokens) + "."


def _lines(make) -> str:
    return "\n".join(make(i, _prose(i, 8)) for i in range(30))


@pytest.mark.parametrize("text, reason", [
    ("too short to be a document", "gopher: 6 words < 50"),
    (" ".join(a + b for a in "abcdefgh" for b in "abcdefgh"), "gopher: mean word length 2.0 < 3"),
    (" ".join(f"{w} #{w}" for w in _prose(1, 100).split()), "gopher: '#' per word"),
    (_lines(lambda i, line: f"- {line}"), "gopher: lines starting with a bullet 1.00 > 0.9"),
    (_lines(lambda i, line: f"{line[:-1]}\u2026"), "gopher: lines ending with an ellipsis 1.00 > 0.3"),
    (" ".join(f"{w} {i * 7919}" for i, w in enumerate(_prose(2, 100).split())), "gopher: words with a letter"),
    (" ".join(w for w in _prose(3, 300).split() if w not in {"the", "of", "and", "to", "with", "that", "have"}),
     "gopher: 0 stop words < 2"),
    ("\n".join([_prose(4, 80)] + ["the same line of text that repeats itself here"] * 12), "gopher: duplicate lines"),
    (_prose(5, 100) + "\n\nlorem ipsum dolor sit amet", "c4: contains 'lorem ipsum'"),
    (_prose(6, 100) + " buy cheap" * 30, "gopher: top 2-gram"),
])
def test_quality_names_the_rule(text, reason):
    got = HeuristicQuality()(text)
    assert got is not None and got.startswith(reason), got


def test_quality_thresholds_are_fields():
    short = " ".join(["the quick brown fox jumps over the lazy dog"] * 2)
    assert HeuristicQuality()(short).startswith("gopher: 18 words < 50")
    assert HeuristicQuality(min_words=10, max_duplicate_lines=1, max_duplicate_line_chars=1,
                            max_top_ngram_chars=(1, 1, 1))(short) is None


def test_code_mode_keeps_python_and_catches_repetition():
    source = (Path(sysconfig.get_paths()["stdlib"]) / "colorsys.py").read_text()
    assert HeuristicQuality()(source).startswith("gopher: words with a letter")  # prose rules throw it away
    assert HeuristicQuality.for_code()(source) is None
    generated = "\n".join(["    table.append(value)"] * 40)
    assert HeuristicQuality.for_code()(generated).startswith("gopher: duplicate lines")


# --- classifier --------------------------------------------------------------------------------------

def _recipes(rng, n):
    food = "flour sugar butter eggs oven bake minutes stir bowl dough salt pepper onion garlic simmer".split()
    return [" ".join(rng.choice(food) for _ in range(40)) for _ in range(n)]


def _spam(rng, n):
    spam = "click free winner prize cash offer now limited bonus casino deal subscribe viagra cheap".split()
    return [" ".join(rng.choice(spam) for _ in range(40)).upper() for _ in range(n)]


def test_classifier_separates_held_out_texts(tmp_path):
    rng = random.Random(0)
    classifier = QualityClassifier.train(_recipes(rng, 40), _spam(rng, 40))
    good, bad = classifier.scores(_recipes(rng, 20)), classifier.scores(_spam(rng, 20))
    assert good.min() > 0.5 > bad.max()
    assert 0.0 <= bad.min() and good.max() <= 1.0
    path = tmp_path / "classifier.npz"
    classifier.save(path)
    again = QualityClassifier.load(path)
    text = _recipes(rng, 1)[0]
    assert again.score(text) == pytest.approx(classifier.score(text), rel=1e-5)
    keep = ClassifierFilter(classifier, 0.5)
    assert keep(text) is None
    assert keep(_spam(rng, 1)[0]).startswith("classifier: quality score 0.")


def test_classifier_refuses_one_sided_training():
    with pytest.raises(ValueError, match="good and bad"):
        QualityClassifier.train(["a text"], [])


# --- safety ------------------------------------------------------------------------------------------

def test_safety_list_ships_with_the_package():
    entries = shipped_words()
    assert len(entries) > 50 and "fuck" in entries and "len" not in entries


def test_safety_counts_whole_words_case_insensitively_and_keeps_a_stray_one():
    check = SafetyFilter()
    assert check(_prose(0, 300) + " Fuck.") is None  # one word in 300: kept
    removed = check("What the FUCK is this shit, you motherfucker.")
    assert removed.startswith("safety: 3 blocklisted words in 8 ")
    assert "fuck" not in removed.lower()
    assert check("Scunthorpe and Penistone are towns in England") is None  # whole words only
    assert SafetyFilter(["blue cheese", "rot"], max_fraction=0.0)("Blue  Cheese is fine") is not None


# --- dedup -------------------------------------------------------------------------------------------

def test_exact_dedup_keeps_the_first_of_each_group():
    dedup = ExactDedup()
    for i, text in enumerate(["Hello  World", "other", "hello world", "HELLO\nWORLD", "other "]):
        dedup.add(10 + i, text)
    assert dedup.duplicates() == {12, 13, 14}


def test_lsh_bands_match_datasketch():
    from datasketch.lsh import _optimal_param

    for num_perm, threshold in [(128, 0.8), (128, 0.5), (64, 0.7)]:
        assert lsh_bands(num_perm, threshold) == _optimal_param(threshold, num_perm, 0.1, 0.9)
        assert lsh_bands(num_perm, threshold, false_positive_weight=0.5, false_negative_weight=0.5) == \
            _optimal_param(threshold, num_perm, 0.5, 0.5)
    assert lsh_bands(128, 0.8) == (14, 9)


def test_signature_is_the_same_in_another_process():
    text = PROSE * 2
    with multiprocessing.get_context("spawn").Pool(1) as pool:  # a fresh interpreter: a new hash salt
        theirs = pool.apply(signature, (text,))
    np.testing.assert_array_equal(theirs, signature(text))
    assert theirs.dtype == np.uint32 and theirs.shape == (128,)


def test_near_dedup_groups_similar_texts():
    rng = random.Random(1)
    vocab = [f"w{i}" for i in range(3000)]
    docs = [" ".join(rng.choices(vocab, k=400)) for _ in range(60)]
    dedup = NearDedup()
    for i, doc in enumerate(docs):
        dedup.add(i, doc)
    for i, doc in enumerate(docs[:20]):
        tokens = doc.split()
        tokens[200:208] = ["edited"] * 8  # a changed sentence: Jaccard of 3-gram sets ~0.95
        dedup.add_signature(100 + i, dedup.signature(" ".join(tokens)))
    for i, doc in enumerate(docs[20:40]):
        tokens = doc.split()
        for k in rng.sample(range(400), 20):  # 5% of the words, one at a time: Jaccard ~0.75
            tokens[k] = f"edit{k}"
        dedup.add_signature(200 + i, dedup.signature(" ".join(tokens)))
    assert dedup.duplicates() == {100 + i for i in range(20)} | {200 + i for i in range(20)}


def test_near_dedup_with_signatures_in_a_file_finds_the_same(tmp_path):
    rng = random.Random(2)
    docs = [" ".join(rng.choices([f"w{i}" for i in range(500)], k=200)) for _ in range(30)]
    docs += [d.replace("w1 ", "x ", 3) for d in docs[:10]]
    found = []
    for spill in (False, True):
        dedup = NearDedup()
        if spill:
            dedup.spill_to(tmp_path / "index")
            dedup.spill_chunk = 7  # several writes, and a last partial one
        for i, doc in enumerate(docs):
            dedup.add(i, doc)
        found.append(dedup.duplicates())
    assert found[0] == found[1] and len(found[0]) >= 9
    assert (tmp_path / "index" / "signatures.u32").stat().st_size == len(docs) * 128 * 4
    assert (tmp_path / "index" / "band-000.u64").stat().st_size == len(docs) * 8
    with pytest.raises(ValueError, match="before the first signature"):
        dedup.spill_to(tmp_path / "again")


# --- decontaminate -----------------------------------------------------------------------------------

def test_word_gram_hashes_ignore_case_punctuation_and_spacing():
    a = hash_grams(hash_words(words("Def add(x, y):\n    return x+y")), 3)
    b = hash_grams(hash_words(words("def   ADD ( x,y ) : return x + y")), 3)
    np.testing.assert_array_equal(a, b)


def test_decontaminator_finds_long_and_short_eval_texts():
    question = "Which planet of the solar system is known as the red planet because of its colour"
    check = Decontaminator({"quiz": [question, "Name the largest ocean", "yes"]}, n=13)
    planted = f"{PROSE} Notes: WHICH planet   of the Solar-System is known as the red planet because {PROSE}"
    assert check(planted) == "decontaminate: shares a 13-gram with quiz (which planet of the solar system ...)"
    assert check(f"{PROSE} name the LARGEST ocean. {PROSE}").startswith("decontaminate: shares a 4-gram with quiz")
    assert check(f"{PROSE} name the largest lake") is None  # not contiguous
    assert check(PROSE + " yes") is None  # under min_words: not indexed
    numbers = " ".join(map(str, range(1, 30)))
    assert Decontaminator({"table": [f"assert f() == [{numbers}]"]})(f"x = [{numbers}]") is None
    assert Decontaminator({"table": [f"assert f() == [{numbers}]"]})(f"assert f() == [{numbers}]") is not None


def test_decontaminator_refuses_bad_lengths():
    with pytest.raises(ValueError, match="min_words <= n"):
        Decontaminator({}, n=0)
    assert Decontaminator({"s": ["a b c d"]}, n=3)("x a b c y") is not None  # min_words follows a small n
    with pytest.raises(ValueError, match="max_fraction"):
        SafetyFilter(max_fraction=1.5)


def test_eval_sets_reads_humaneval_benchmarks_and_jsonl(tmp_path):
    (tmp_path / "gsm8k").mkdir()
    (tmp_path / "gsm8k" / "test.jsonl").write_text(json.dumps(
        {"question": "Tom has 3 boxes of 12 pencils each and gives away 5; how many pencils are left?",
         "answer": "36 - 5 = 31\n#### 31"}) + "\n")
    jsonl = tmp_path / "mine.jsonl"
    jsonl.write_text(json.dumps({"contents": [{"role": "user", "parts": [{"text": "my private question text"}]},
                                              {"role": "model", "parts": [{"text": "its answer"}]}]}) + "\n")
    sets = eval_sets(data_dir=tmp_path, jsonl=[jsonl], cache_dir=tmp_path / "no-cache")
    assert len(sets["humaneval"]) == 2 * 164
    assert any("how many pencils are left" in t for t in sets["gsm8k"])
    assert sets["jsonl:mine.jsonl"] == ["my private question text", "its answer"]
    assert not any(name.startswith("demo") for name in sets)  # no corpus under cache_dir: never built
    assert not (tmp_path / "no-cache").exists()


def test_eval_sets_names_a_bad_jsonl_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"contents": []}\n{not json\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl:"):
        eval_sets(jsonl=[bad], demo=False)


# --- all stages on a small planted corpus --------------------------------------------------------------

def _clean_documents(count: int, size: int = 3000) -> list[tuple[str, bool]]:
    """(text, is_code) chunks of the standard library's sources, cut at line ends."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    docs, seen = [], ExactDedup()
    for path in sorted(stdlib.glob("*.py")):
        text = path.read_text(encoding="utf-8", errors="replace")
        while text and len(docs) < count:
            cut = text.find("\n", size)
            chunk, text = (text, "") if cut < 0 else (text[:cut], text[cut + 1:])
            if len(chunk.split()) >= 50:
                docs.append(chunk)
        if len(docs) >= count:
            break
    for i, doc in enumerate(docs):
        seen.add(i, doc)
    repeated = seen.duplicates()
    return [(doc, True) for i, doc in enumerate(docs) if i not in repeated]


def _disguise(text: str, rng: random.Random) -> str:
    """The same words with case and whitespace changed."""
    return "  ".join(w.upper() if rng.random() < 0.5 else w for w in text.split())


def test_stages_clean_a_planted_corpus():
    rng = random.Random(0)
    clean = _clean_documents(240)
    sets = eval_sets(demo=False)
    prompts = sets["humaneval"][0:2 * 60:2]
    contaminated = []
    for i, prompt in enumerate(prompts):
        host = clean[i][0]
        middle = len(host) // 2
        contaminated.append((host[:middle] + "\n" + _disguise(prompt, rng) + "\n" + host[middle:], True))
    near = []
    for doc, _ in clean[:60]:
        tokens = doc.split()
        start = rng.randrange(len(tokens) // 2)
        span = max(1, len(tokens) // 20)
        tokens[start:start + span] = [f"changed{j}" for j in range(span)]  # 5% of the words, in one edit
        near.append((" ".join(tokens), True))
    records = clean + contaminated + near
    kinds = ["clean"] * len(clean) + ["contaminated"] * len(contaminated) + ["near"] * len(near)

    filters = [HeuristicQuality.for_code(), SafetyFilter(), Decontaminator(sets)]
    exact, similar = ExactDedup(), NearDedup()
    removed = set()
    for i, (text, _) in enumerate(records):
        text = normalize_text(text)
        if any(f(text) is not None for f in filters):
            removed.add(i)
            continue
        exact.add(i, text)
        similar.add(i, text)
    removed |= exact.duplicates() | similar.duplicates()

    def share(kind):
        members = [i for i, k in enumerate(kinds) if k == kind]
        return sum(i in removed for i in members) / len(members)

    assert share("contaminated") >= 0.99
    assert share("near") >= 0.95
    assert share("clean") < 0.01
