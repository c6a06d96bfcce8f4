"""examples/post_training.py: the rule that labels and judges the full-sentence behaviour, and the
files it writes (every pair's chosen reply follows the rule, every rejected one breaks it)."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def example():
    spec = importlib.util.spec_from_file_location("post_training", ROOT / "examples" / "post_training.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("question, reply, answer, follows", [
    ("what color is the shape?", "The shape is blue.", "blue", True),
    ("what color is the triangle?", "The triangle is blue.", "blue", True),
    ("what is the blue shape?", "The blue shape is a rectangle.", "rectangle", True),
    ("what shape does the image contain?", "The shape is a circle.", "circle", True),
    ("what color is the shape?", "blue", "blue", False),  # not a sentence
    ("what color is the shape?", "The shape is red.", "blue", False),  # the wrong answer
    ("what color is the shape?", "It is blue.", "blue", False),  # does not name what was asked about
    ("what color is the triangle?", "The shape is blue.", "blue", False),  # names another subject
    ("what color is the shape?", "The shape is blue or red.", "blue", False),  # hedges
    ("what color is the shape?", "The shape is blue. Yes.", "blue", False),  # more than one sentence
])
def test_the_rule_by_hand(example, question, reply, answer, follows):
    assert example.follows(question, reply, answer) is follows


def test_the_data_is_labelled_by_the_rule(example, tmp_path):
    example.write_data(tmp_path, sft=40, pairs=60, prompts=20, heldout=10)
    for line in (tmp_path / "pairs.jsonl").read_text().splitlines():
        pair = json.loads(line)
        text = pair["contents"][0]["parts"][1]["text"]
        assert text.endswith(example.INSTRUCTION)
        question = text.removesuffix(" " + example.INSTRUCTION)
        answer = pair["chosen"][0]["text"].rstrip(".").split()[-1]
        assert example.follows(question, pair["chosen"][0]["text"], answer)
        assert not example.follows(question, pair["rejected"][0]["text"], answer)
    sft = [json.loads(line) for line in (tmp_path / "sft.jsonl").read_text().splitlines()]
    assert sum(s["contents"][0]["parts"][1]["text"].endswith(example.INSTRUCTION) for s in sft) == 20
    held = [json.loads(line) for line in (tmp_path / "heldout.jsonl").read_text().splitlines()]
    assert len(held) == 10 and all("/test/" in h["image"] for h in held)
    validation = [json.loads(line) for line in (tmp_path / "validation.jsonl").read_text().splitlines()]
    asked = {(p["contents"][0]["parts"][0]["image"], p["contents"][0]["parts"][1]["text"].removesuffix(" " + example.INSTRUCTION))
             for name in ("sft", "prompts") for p in map(json.loads, (tmp_path / f"{name}.jsonl").read_text().splitlines())}
    assert len(validation) == 10 and not asked & {(v["image"], v["question"]) for v in validation}


def test_the_sft_mixture_replays_the_demos_vqa_when_given_it(example, tmp_path):
    import yaml

    for replay in (None, tmp_path / "vqa"):
        out = tmp_path / ("replay" if replay else "plain")
        example.write_data(out, sft=4, pairs=6, prompts=2, heldout=2, replay=replay)
        mixture = yaml.safe_load((out / "sft.yaml").read_text())
        assert sorted(mixture["sources"]) == (["sft", "vqa"] if replay else ["sft"])
        assert mixture["eval_tasks"] == ["vqa"]
        if replay:
            assert mixture["sources"]["vqa"]["path"] == str(replay.resolve()) and mixture["weights"]["vqa"] == 1.0
    shares = [(out / "pairs.jsonl").read_text() for out in (tmp_path / "plain", tmp_path / "replay")]
    assert shares[0] == shares[1]


@pytest.mark.parametrize("share", [0.0, 1.0])
def test_the_share_of_wrong_answer_rejections(example, tmp_path, share):
    example.write_data(tmp_path, sft=4, pairs=60, prompts=2, heldout=2, wrong_answer_share=share)
    pairs = [json.loads(line) for line in (tmp_path / "pairs.jsonl").read_text().splitlines()]
    wrong = [p["rejected"][0]["text"].startswith("The ") for p in pairs]
    assert all(wrong) if share == 1.0 else not any(wrong)


@pytest.mark.parametrize("share", [0.0, 0.3, 1.0])
def test_the_share_of_demonstrations_written_as_the_rule_wants(example, tmp_path, share):
    example.write_data(tmp_path, sft=400, pairs=6, prompts=2, heldout=2, sentence_share=share)
    demos = [json.loads(line)["contents"] for line in (tmp_path / "sft.jsonl").read_text().splitlines()]
    instructed = [d for d in demos if d[0]["parts"][1]["text"].endswith(example.INSTRUCTION)]
    plain = [d for d in demos if not d[0]["parts"][1]["text"].endswith(example.INSTRUCTION)]
    sentences = [d[1]["parts"][0]["text"].endswith(".") for d in instructed]
    assert len(instructed) == 200 and not any(d[1]["parts"][0]["text"].endswith(".") for d in plain)
    assert abs(np.mean(sentences) - share) < 0.08
    # The pairs do not depend on who wrote the demonstrations.
    example.write_data(tmp_path / "all", sft=400, pairs=6, prompts=2, heldout=2)
    assert (tmp_path / "pairs.jsonl").read_text() == (tmp_path / "all" / "pairs.jsonl").read_text()


def test_label_prefers_a_passing_reply_of_the_policy_to_a_failing_one(example, tmp_path, monkeypatch):
    example.write_data(tmp_path, sft=4, pairs=6, prompts=3, heldout=2)
    questions = [json.loads(line) for line in (tmp_path / "rl_questions.jsonl").read_text().splitlines()]
    assert len(questions) == 3
    good = [example.sentence(q["question"], q["answer"]) for q in questions]
    canned = [good[0], questions[0]["answer"],  # one passes, one fails: a pair of the two
              good[1], good[1],  # every reply passes: no pair
              "yes", "no"]  # none passes: the rule's sentence is preferred
    monkeypatch.setattr(example, "_replies", lambda run, items, params: canned[:len(items)])
    counts = example.label("RUN", tmp_path, tmp_path / "pairs2.jsonl", replies=2)
    assert counts == {"questions": 3, "all_pass": 1, "none_pass": 1, "new_pairs": 2}
    lines = (tmp_path / "pairs2.jsonl").read_text().splitlines()
    assert lines[:6] == (tmp_path / "pairs.jsonl").read_text().splitlines()
    new = [json.loads(line) for line in lines[6:]]
    assert [(p["chosen"][0]["text"], p["rejected"][0]["text"]) for p in new] == [
        (good[0], questions[0]["answer"]), (good[2], "yes")]
