"""`r1v3 eval mmmu` end to end on a tiny model and a generated MMMU-format copy."""

import json

import pytest

from tests.mmmu_fixture import write_sample_copy


@pytest.fixture(scope="module")
def mmmu_copy(tmp_path_factory):
    path = tmp_path_factory.mktemp("mmmu")
    write_sample_copy(path, per_subject=1, seed=0)
    return path


@pytest.fixture
def ready(cli, mmmu_copy):
    assert cli("init", "tiny", "--name", "tiny", "--family", "internvl")[0] == 0
    code, _, err = cli("data", "mmmu", "--path", mmmu_copy, "--name", "mmmu")
    assert code == 0, err
    return cli


EVAL = ["eval", "mmmu", "--model", "tiny", "--data", "mmmu", "--max-new-tokens", "8", "--temperature", "0",
        "--batch-size", "4"]


def test_import_keeps_every_item_and_image(ready):
    art = ready.store.resolve("mmmu", kind="dataset", verify=True)
    assert art.metrics["rows"] == 30 and art.metrics["subjects"] == 30
    assert art.metrics["images"] > 30  # some items have two images


def test_eval_end_to_end(ready):
    code, out, err = ready(*EVAL, "--name", "ev")
    assert code == 0, err
    assert "Overall" in out and "Tech & Engineering" in out
    art = ready.store.resolve("ev", kind="eval", verify=True)
    preds = [json.loads(line) for line in art.file("predictions.jsonl").read_text().splitlines()]
    scores = json.loads(art.file("scores.json").read_text())
    assert len(preds) == 30 == scores["overall"]["n"]
    for p in preds:
        assert {"response", "extracted", "method", "correct", "parse_failure"} <= set(p)
    assert scores["overall"]["acc"] == sum(p["correct"] for p in preds) / 30
    assert art.file("chart.png").stat().st_size > 1000
    assert art.manifest["config"]["style"] == "reasoning" and art.manifest["config"]["max_new_tokens"] == 8
    assert [i["ref"] for i in art.manifest["inputs"]] == ["tiny@v1", "mmmu@v1"]
    assert not (ready.store.root / ".work").exists()  # the work directory and its lock file go once published


def test_resume_after_interruption_matches_uninterrupted(ready, monkeypatch):
    from r1v3 import generation

    assert ready(*EVAL, "--name", "full")[0] == 0
    real = generation.TransformersBackend.generate

    def dies_after_two_batches(self, requests, sampling, on_result=None):
        for i, item in enumerate(real(self, requests, sampling, on_result)):
            if i == 8:
                raise KeyboardInterrupt  # what Ctrl-C (or a killed job) leaves behind
            yield item

    monkeypatch.setattr(generation.TransformersBackend, "generate", dies_after_two_batches)
    code, _, _ = ready(*EVAL, "--name", "cut")
    assert code == 130
    assert "cut" not in [a.name for a in ready.store.list()]
    monkeypatch.setattr(generation.TransformersBackend, "generate", real)
    code, out, err = ready(*EVAL, "--name", "cut", "--resume")
    assert code == 0, err
    cut, full = ready.store.resolve("cut"), ready.store.resolve("full")
    assert cut.metrics["items_resumed"] == 8 and cut.metrics["items_generated"] == 22
    strip = lambda a: [{k: v for k, v in json.loads(l).items()} for l in a.file("predictions.jsonl").read_text().splitlines()]
    assert strip(cut) == strip(full)
    # a resume with other settings is refused rather than mixing two runs
    monkeypatch.setattr(generation.TransformersBackend, "generate", dies_after_two_batches)
    ready(*EVAL, "--name", "cut2")
    monkeypatch.setattr(generation.TransformersBackend, "generate", real)
    code, _, err = ready(*EVAL[:-4], "--temperature", "0", "--max-new-tokens", "9", "--name", "cut2", "--resume")
    assert code == 2 and "used other settings, model or data: max_new_tokens 8 -> 9; rerun" in err


def test_rescore_official_layout_and_json(cli, tmp_path):
    out_dir = tmp_path / "official"
    for subject, rows in {
        "Art": [{"id": "validation_Art_1", "question_type": "multiple-choice", "answer": "B",
                 "all_choices": ["A", "B", "C", "D"], "index2ans": {"A": "x", "B": "y", "C": "z", "D": "w"},
                 "response": "The answer is (B)."}],
        "Math": [{"id": "validation_Math_1", "question_type": "open", "answer": "1,000",
                  "all_choices": [], "index2ans": {}, "response": "It is 1000."},
                 {"id": "validation_Math_2", "question_type": "open", "answer": "3", "all_choices": [],
                  "index2ans": {}, "response": "no idea"}],
    }.items():
        (out_dir / subject).mkdir(parents=True)
        (out_dir / subject / "output.json").write_text(json.dumps(rows))
    code, out, err = cli("eval", "mmmu", "--responses", out_dir, "--json")
    assert code == 0, err
    scores = json.loads(out)
    assert scores["overall"] == {"acc": 2 / 3, "n": 3}
    assert scores["disciplines"]["Art & Design"] == {"acc": 1.0, "n": 1}
    assert scores["subjects"]["Math"] == {"acc": 0.5, "n": 2}
    assert set(scores) >= {"overall", "disciplines", "subjects", "parse_failures"}
    flat = tmp_path / "flat.json"
    flat.write_text(json.dumps(json.loads((out_dir / "Math" / "output.json").read_text())))
    code, out, _ = cli("eval", "mmmu", "--responses", flat, "--json")
    assert code == 0 and json.loads(out)["overall"]["n"] == 2
    code, out, _ = cli("eval", "mmmu", "--responses", out_dir, "--name", "rescored")
    assert code == 0 and cli.store.resolve("rescored", kind="eval").metrics["n"] == 3


def test_blank_images_ablation(ready, monkeypatch):
    from r1v3 import generation

    seen = []
    real = generation.TransformersBackend.generate

    def spy(self, requests, sampling, on_result=None):
        requests = list(requests)
        seen.extend(im for r in requests for im in r.images)
        yield from real(self, requests, sampling, on_result)

    monkeypatch.setattr(generation.TransformersBackend, "generate", spy)
    code, _, err = ready(*EVAL, "--name", "blind", "--blank-images", "--limit", "6")
    assert code == 0, err
    assert seen and all(im.getextrema() == ((255, 255),) * 3 for im in seen)
    assert ready.store.resolve("blind", kind="eval").manifest["config"]["blank_images"] is True
    ready.store.resolve("mmmu", verify=True)  # the dataset itself is untouched
    code, _, err = ready("eval", "mmmu", "--responses", ready.store.root, "--blank-images")
    assert code == 2 and "blank_images do not apply" in err


def test_resume_with_an_unreadable_state_file(ready):
    work = ready.store.root / ".work" / "torn" / "eval"
    work.mkdir(parents=True)
    (work / "r1v3-run.json").write_text("{\"ke")  # torn: no progress to trust, so --resume starts fresh
    code, _, err = ready(*EVAL, "--name", "torn", "--limit", "2", "--resume")
    assert code == 0, err
    work.mkdir(parents=True, exist_ok=True)
    (work / "r1v3-run.json").write_text("{\"ke")
    (work / "predictions.partial.jsonl").write_text(
        json.dumps({"id": "x", "sample": 0, "response": "A", "n_tokens": 1, "finish_reason": "stop"}) + "\n")
    code, _, err = ready(*EVAL, "--name", "torn", "--limit", "2", "--resume")
    assert code == 2 and "cannot tell which settings" in err


def test_eval_bad_inputs(ready, tmp_path):
    code, _, err = ready("eval", "mmmu", "--model", "tiny", "--data", "mmmu", "--name", "e", "--subjects", "Poetry")
    assert code == 2 and "unknown MMMU subject" in err
    code, _, err = ready("eval", "mmmu", "--model", "tiny", "--data", "mmmu", "--name", "e", "--split", "test")
    assert code == 2 and "no split 'test'" in err
    code, _, err = ready("data", "mmmu", "--path", tmp_path / "absent", "--name", "m")
    assert code == 2
    code, _, err = ready("data", "mmmu", "--path", tmp_path, "--name", "m", "--split", "dev")
    assert code == 2
    code, _, err = ready("data", "mmmu", "--from-hub", "--name", "m", "--subjects", "Math")  # tests run offline
    assert code == 2 and "cannot download MMMU/MMMU@main" in err
    assert [a.name for a in ready.store.list() if a.kind == "eval"] == []


def test_text_only_model_is_refused(ready, tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    from r1v3.models import build_tiny

    _, processor = build_tiny("llava")
    llm = LlamaForCausalLM(LlamaConfig(vocab_size=len(processor.tokenizer), hidden_size=32, intermediate_size=64,
                                       num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2))
    llm.save_pretrained(tmp_path / "llm")
    processor.tokenizer.save_pretrained(tmp_path / "llm")
    assert ready("import-model", tmp_path / "llm", "--name", "textlm")[0] == 0
    code, _, err = ready("eval", "mmmu", "--model", "textlm", "--data", "mmmu", "--name", "e")
    assert code == 2 and "is a text-only model" in err


def test_ban_words_reach_the_backend_and_the_key(ready, monkeypatch):
    from r1v3 import generation

    seen = []
    real = generation.TransformersBackend.generate

    def spy(self, requests, sampling, on_result=None):
        seen.append(sampling.ban_words)
        yield from real(self, requests, sampling, on_result)

    monkeypatch.setattr(generation.TransformersBackend, "generate", spy)
    code, out, err = ready(*EVAL, "--name", "nowait", "--limit", "3", "--ban-words", "Wait,Hmm", "--json")
    assert code == 0, err
    assert seen == [("Wait", "Hmm")]
    assert json.loads(out)["overall"]["n"] == 3  # the progress bar stays off stdout
    assert ready.store.resolve("nowait", kind="eval").manifest["config"]["ban_words"] == ["Wait", "Hmm"]
    from r1v3.errors import UserError
    from stages import evaluate

    with pytest.raises(UserError, match=r"--ban-words \(ban_words\): ' Hmm' is not a word"):
        evaluate.Config(model="m", data="d", name="n", ban_words=["Wait", " Hmm"])
