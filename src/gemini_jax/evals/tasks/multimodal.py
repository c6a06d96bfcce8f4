"""Image, audio and video benchmarks, 0-shot greedy and "pixel only" (no OCR text given): the
prompt is one user turn, the media first, then the question and an instruction to answer
briefly. Paths in the files are relative to --data-dir/<task>/.

  vqav2           *questions*.json {"data_subtype", "questions": [{image_id, question, question_id}]}
                  and *annotations*.json {"annotations": [{question_id, answers: [{answer}]}]};
                  images <data_subtype>/COCO_<data_subtype>_<image_id:012d>.jpg; VQA accuracy
  textvqa         *.json {"data": [{question, image_id, answers}]}, images train_images/<image_id>.jpg;
                  VQA accuracy
  docvqa          *.json {"data": [{questionId, question, image, answers}]}; ANLS
  infographicvqa  *.json {"data": [{questionId, question, image_local_name, answers}]}, images in
                  images/; ANLS
  chartqa         *.json [{imgname, query, label}], images in png/; relaxed accuracy
  ai2d            questions/<image>.json {imageName, questions: {text: {answerTexts, correctAnswer,
                  questionId}}}, images in images/; lettered choices, exact match on the letter
  mmmu            *.jsonl {id, question, options (a list, or its Python spelling as on the Hub),
                  answer, image_1..image_7, question_type}; "<image n>" in the text places image n
  mathvista       *.json as published ({pid: {question, image, choices, answer, question_type,
                  answer_type, ...}}, or a list of them) or *.jsonl; "multi_choice" questions as
                  lettered choices, "free_form" ones answered briefly; exact match
  asr_manifest    *.json / *.jsonl NeMo manifests {audio_filepath, text}; WER
  videoqa         *.jsonl {video, question, answer (a string or a list)}; exact match
  vatex           VATEX's published JSON [{videoID, enCap: [captions]}], each clip as
                  videos/<videoID>.gif, .webp or .png (animated: convert VATEX's MP4 files); captioning,
                  CIDEr-D x 100 against every English caption
  covost2         covost_v2.<src>_<tgt>.tsv as CoVoST 2 publishes it (columns path, sentence,
                  translation, client_id, and split in the full file: its "test" rows are read) or
                  covost_v2.<src>_<tgt>.test.tsv; audio in clips/; speech translation, corpus BLEU
"""

from __future__ import annotations

import ast
import csv
import re
from pathlib import Path

from gemini_jax.data.examples import Content, Example, Part
from gemini_jax.evals.protocols import LETTERS, multiple_choice_question
from gemini_jax.evals.tasks.base import (
    Asking,
    Item,
    Task,
    TaskData,
    TaskDataError,
    field,
    files,
    media_file,
    read_json,
    read_jsonl,
    strings,
)

SHORT = "Answer the question using a single word or phrase."
LETTER = "Answer with the option's letter from the given choices directly."


def user_turn(*parts: Part) -> Example:
    return Example(contents=(Content("user", parts),))


def _question(image: str, question: str, instruction: str = SHORT) -> Example:
    return user_turn(Part(image=image), Part(text=f"{question}\n{instruction}"))


def _data_list(path: Path, key: str = "data") -> list:
    data = read_json(path, f'an object with a "{key}" list')
    return field(data, key, list, str(path))


def load_vqav2(folder: Path) -> TaskData:
    [questions_file] = files(folder, "*questions*.json", "a VQAv2 questions file")[:1]
    [annotations_file] = files(folder, "*annotations*.json", "a VQAv2 annotations file")[:1]
    questions = read_json(questions_file, 'a VQAv2 {"data_subtype", "questions"} object')
    subtype = field(questions, "data_subtype", str, str(questions_file))
    answers = {}
    for i, a in enumerate(_data_list(annotations_file, "annotations")):
        where = f"{annotations_file}: annotations[{i}]"
        human = [field(x, "answer", str, f"{where}: answers[{j}]")
                 for j, x in enumerate(field(a, "answers", list, where))]
        answers[field(a, "question_id", int, where)] = tuple(human)
    items = []
    for i, q in enumerate(field(questions, "questions", list, str(questions_file))):
        where = f"{questions_file}: questions[{i}]"
        qid, image_id = field(q, "question_id", int, where), field(q, "image_id", int, where)
        if qid not in answers:
            raise TaskDataError(f"{where}: question_id {qid} has no entry in {annotations_file}")
        image = media_file(folder, f"{subtype}/COCO_{subtype}_{image_id:012d}.jpg", where, "image_id")
        items.append(Item(id=str(qid), prompt=_question(image, field(q, "question", str, where)), golds=answers[qid]))
    return TaskData(items=items)


def _vqa_records(folder: Path, image_field: str, image_dir: str, *, suffix: str = "",
                 id_field: str = "questionId") -> list[Item]:
    items = []
    for path in files(folder, "*.json", 'a {"data": [...]} question file'):
        for i, record in enumerate(_data_list(path)):
            where = f"{path}: data[{i}]"
            name = f"{image_dir}{field(record, image_field, str, where)}{suffix}"
            image = media_file(folder, name, where, image_field)
            items.append(Item(id=str(record.get(id_field, f"{path.stem}/{i}")),
                              prompt=_question(image, field(record, "question", str, where)),
                              golds=strings(record, "answers", where)))
    return items


def load_textvqa(folder: Path) -> TaskData:
    return TaskData(items=_vqa_records(folder, "image_id", "train_images/", suffix=".jpg", id_field="question_id"))


def load_docvqa(folder: Path) -> TaskData:
    return TaskData(items=_vqa_records(folder, "image", ""))


def load_infographicvqa(folder: Path) -> TaskData:
    return TaskData(items=_vqa_records(folder, "image_local_name", "images/"))


def _listed_records(folder: Path, benchmark: str, fields: str):
    """(path, index, record) of every record of the JSON files in `folder`, each a list of
    {`fields`} objects."""
    for path in files(folder, "*.json", f"{benchmark} files: a list of {{{fields}}}"):
        records = read_json(path, f"a list of {{{fields}}}")
        if not isinstance(records, list):
            raise TaskDataError(f"{path}: expected a list of {{{fields}}}, got {type(records).__name__}")
        yield from ((path, i, record) for i, record in enumerate(records))


def load_chartqa(folder: Path) -> TaskData:
    items = []
    for path, i, record in _listed_records(folder, "ChartQA", "imgname, query, label"):
        where = f"{path}: [{i}]"
        image = media_file(folder, f"png/{field(record, 'imgname', str, where)}", where, "imgname")
        items.append(Item(id=f"{path.stem}/{i}", prompt=_question(image, field(record, "query", str, where)),
                          golds=strings(record, "label", where)))
    return TaskData(items=items)


def _choice_item(id: str, parts: list[Part], question: str, choices: list[str], answer: int) -> Item:
    text = f"{multiple_choice_question(question, choices)}\n{LETTER}"
    return Item(id=id, prompt=user_turn(*parts, Part(text=text)), golds=(LETTERS[answer],),
                choices=tuple(LETTERS[: len(choices)]), label=answer)


def load_ai2d(folder: Path) -> TaskData:
    items = []
    for path in files(folder / "questions", "*.json", "AI2D question files {imageName, questions}"):
        record = read_json(path, "an AI2D {imageName, questions} object")
        image = media_file(folder, f"images/{field(record, 'imageName', str, str(path))}", str(path), "imageName")
        for text, q in field(record, "questions", dict, str(path)).items():
            where = f"{path}: questions[{text!r}]"
            choices = list(strings(q, "answerTexts", where))
            answer = field(q, "correctAnswer", int, where)
            if not 0 <= answer < len(choices):
                raise TaskDataError(f"{where}: field 'correctAnswer' is {answer}, expected an index into answerTexts")
            items.append(_choice_item(str(q.get("questionId", where)), [Part(image=image)], text, choices, answer))
    return TaskData(items=items)


_IMAGE_TAG = re.compile(r"<image (\d)>")


def _mmmu_parts(text: str, images: dict[int, str], where: str) -> list[Part]:
    """Text with "<image n>" tags as interleaved parts; images the text never names go first."""
    parts: list[Part] = []
    named = {int(n) for n in _IMAGE_TAG.findall(text)}
    parts += [Part(image=images[n]) for n in sorted(images) if n not in named]
    for i, piece in enumerate(_IMAGE_TAG.split(text)):
        if i % 2:
            if int(piece) not in images:
                raise TaskDataError(f"{where}: the text names <image {piece}> but field 'image_{piece}' is empty")
            parts.append(Part(image=images[int(piece)]))
        elif piece.strip():
            parts.append(Part(text=piece))
    return parts


def load_mmmu(folder: Path) -> TaskData:
    items = []
    for path in files(folder, "*.jsonl", "MMMU jsonl files"):
        for where, record in read_jsonl(path, "MMMU {id, question, options, answer, image_1, ...}"):
            images = {n: media_file(folder, record[f"image_{n}"], where, f"image_{n}")
                      for n in range(1, 8) if isinstance(record.get(f"image_{n}"), str) and record[f"image_{n}"]}
            question, answer = field(record, "question", str, where), field(record, "answer", str, where)
            options = field(record, "options", (list, str), where)
            if isinstance(options, str):
                try:
                    options = ast.literal_eval(options)
                except (ValueError, SyntaxError):
                    raise TaskDataError(f"{where}: field 'options' is not a list of strings: {options!r:.60}") from None
            item_id = str(record.get("id", f"{path.stem}/{len(items)}"))
            if record.get("question_type", "multiple-choice") == "multiple-choice":
                if answer not in LETTERS[: len(options)]:
                    raise TaskDataError(f"{where}: field 'answer' is {answer!r}, expected a letter among the "
                                        f"{len(options)} options")
                text = f"{multiple_choice_question(question, [str(o) for o in options])}\n{LETTER}"
                items.append(Item(id=item_id, prompt=user_turn(*_mmmu_parts(text, images, where)), golds=(answer,),
                                  choices=tuple(LETTERS[: len(options)]), label=LETTERS.index(answer)))
            else:
                text = f"{question}\n{SHORT}"
                items.append(Item(id=item_id, prompt=user_turn(*_mmmu_parts(text, images, where)), golds=(answer,)))
    return TaskData(items=items)


def _mathvista_records(folder: Path):
    for path in files(folder, "*.json*", "MathVista files: {pid: {question, image, choices, answer, question_type}}"):
        if path.suffix == ".jsonl":
            yield from read_jsonl(path, "MathVista {pid, question, image, choices, answer, question_type}")
            continue
        data = read_json(path, "MathVista's {pid: problem} object or a list of problems")
        if isinstance(data, dict):
            yield from ((f"{path}: [{pid!r}]", {"pid": pid, **record}) for pid, record in data.items())
        elif isinstance(data, list):
            yield from ((f"{path}: [{i}]", record) for i, record in enumerate(data))
        else:
            raise TaskDataError(f"{path}: expected MathVista's {{pid: problem}} object or a list of problems, "
                                f"got {type(data).__name__}")


def load_mathvista(folder: Path) -> TaskData:
    items = []
    for where, record in _mathvista_records(folder):
        if not isinstance(record, dict):
            raise TaskDataError(f"{where}: expected a problem object, got {type(record).__name__}")
        image = media_file(folder, field(record, "image", str, where), where, "image")
        question, answer = field(record, "question", str, where), str(field(record, "answer", (str, int, float), where))
        item_id = str(record.get("pid", where))
        kind = record.get("question_type", "free_form")
        if kind == "multi_choice":
            choices = [str(c) for c in field(record, "choices", list, where)]
            if answer not in choices:
                raise TaskDataError(f"{where}: field 'answer' is {answer!r}, expected one of its choices {choices}")
            items.append(_choice_item(item_id, [Part(image=image)], question, choices, choices.index(answer)))
        elif kind == "free_form":
            items.append(Item(id=item_id, prompt=_question(image, question), golds=(answer,)))
        else:
            raise TaskDataError(f"{where}: field 'question_type' is {kind!r}; accepted: 'multi_choice', 'free_form'")
    return TaskData(items=items)


def load_asr(folder: Path) -> TaskData:
    items = []
    for path in files(folder, "*.json*", "NeMo manifests (one {audio_filepath, text} object per line)"):
        for where, record in read_jsonl(path, "NeMo manifest {audio_filepath, text}"):
            audio = media_file(folder, field(record, "audio_filepath", str, where), where, "audio_filepath")
            items.append(Item(id=where, prompt=user_turn(Part(audio=audio), Part(text="Transcribe this audio.")),
                              golds=(field(record, "text", str, where),)))
    return TaskData(items=items)


def load_videoqa(folder: Path) -> TaskData:
    items = []
    for path in files(folder, "*.jsonl", "video QA jsonl files of {video, question, answer}"):
        for where, record in read_jsonl(path, "video QA {video, question, answer}"):
            video = media_file(folder, field(record, "video", str, where), where, "video")
            text = f"{field(record, 'question', str, where)}\n{SHORT}"
            items.append(Item(id=where, prompt=user_turn(Part(video=video), Part(text=text)),
                              golds=strings(record, "answer", where)))
    return TaskData(items=items)


_CLIP_FORMATS = (".gif", ".webp", ".png")


def load_vatex(folder: Path) -> TaskData:
    items = []
    for path, i, record in _listed_records(folder, "VATEX", "videoID, enCap"):
        where = f"{path}: [{i}]"
        video_id = field(record, "videoID", str, where)
        clip = next((c for c in (folder / "videos" / f"{video_id}{suffix}" for suffix in _CLIP_FORMATS)
                     if c.is_file()), None)
        if clip is None:
            raise TaskDataError(f"{where}: no clip for videoID {video_id!r}: expected videos/{video_id}.gif, "
                                ".webp or .png (an animated image; convert VATEX's MP4 files)")
        prompt = user_turn(Part(video=str(clip)), Part(text="Describe this video in one sentence."))
        items.append(Item(id=video_id, prompt=prompt, golds=strings(record, "enCap", where)))
    return TaskData(items=items)


_COVOST_NAME = re.compile(r"covost_v2\.([a-z]{2,3}(?:-[A-Z]{2})?)_([a-z]{2,3}(?:-[A-Z]{2})?)(?:\.(\w+))?\.tsv$")


def load_covost2(folder: Path) -> TaskData:
    from gemini_jax.evals.tasks.text import LANGUAGES

    items = []
    for path in files(folder, "covost_v2.*.tsv", "CoVoST 2 files covost_v2.<src>_<tgt>[.test].tsv"):
        match = _COVOST_NAME.search(path.name)
        if not match:
            raise TaskDataError(f"{path}: the name must be covost_v2.<src>_<tgt>.tsv or covost_v2.<src>_<tgt>.<split>.tsv "
                                "(e.g. covost_v2.fr_en.test.tsv)")
        source, target = (LANGUAGES.get(code.split("-")[0], code) for code in match.groups()[:2])
        if match[3] not in (None, "test"):
            continue  # a train or dev file beside the test one
        with path.open(encoding="utf-8", newline="") as f:
            rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
        for number, row in enumerate(rows, start=2):  # line 1 is the header
            where = f"{path}:{number}"
            if row.get("split", "test") != "test":
                continue
            missing = [c for c in ("path", "translation") if not row.get(c)]
            if missing:
                raise TaskDataError(f"{where}: no {' or '.join(repr(c) for c in missing)} column value; CoVoST 2 rows "
                                    "have path, sentence, translation and client_id")
            audio = media_file(folder, f"clips/{row['path']}", where, "path")
            prompt = user_turn(Part(audio=audio), Part(text=f"Translate this {source} speech into {target}."))
            items.append(Item(id=where, prompt=prompt, golds=(row["translation"],), meta={"set": path.stem}))
    return TaskData(items=items)


def _image_task(name: str, description: str, load, metric: str) -> Task:
    return Task(name, description, load, Asking.GENERATE, (metric,), max_tokens=16, folder=name)


TASKS = [
    _image_task("vqav2", "natural-image questions, VQA accuracy over 10 human answers", load_vqav2, "vqa_accuracy"),
    _image_task("textvqa", "questions about text in natural images, VQA accuracy", load_textvqa, "vqa_accuracy"),
    _image_task("docvqa", "questions about document scans, ANLS", load_docvqa, "anls"),
    _image_task("infographicvqa", "questions about infographics, ANLS", load_infographicvqa, "anls"),
    _image_task("chartqa", "questions about charts, relaxed accuracy (5% on numbers)", load_chartqa,
                "relaxed_accuracy"),
    Task("ai2d", "science diagrams, lettered multiple choice read from the greedy answer", load_ai2d, Asking.GENERATE,
         ("exact_match",), max_tokens=8, folder="ai2d"),
    Task("mmmu", "college-level multimodal questions, lettered choice or short answer", load_mmmu, Asking.GENERATE,
         ("exact_match",), max_tokens=16, folder="mmmu"),
    Task("mathvista", "mathematical reasoning over images: lettered choices or a short answer, exact match",
         load_mathvista, Asking.GENERATE, ("exact_match",), max_tokens=16, folder="mathvista"),
    Task("asr_manifest", "speech recognition from a NeMo manifest, word error rate", load_asr, Asking.CORPUS, ("wer",),
         max_tokens=128, folder="asr_manifest"),
    Task("videoqa", "questions about videos, exact match", load_videoqa, Asking.GENERATE, ("exact_match",),
         max_tokens=16, folder="videoqa"),
    Task("vatex", "video captioning (VATEX's layout), 0-shot greedy, CIDEr-D", load_vatex, Asking.CORPUS,
         ("cider_d",), max_tokens=32, folder="vatex"),
    Task("covost2", "speech translation (CoVoST 2's layout), 0-shot greedy, corpus BLEU", load_covost2,
         Asking.CORPUS, ("bleu",), max_tokens=128, folder="covost2"),
]
