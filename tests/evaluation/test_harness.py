"""``evaluate`` through lm-evaluation-harness on the tiny model and local fixture tasks, against direct computations."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from lightning_less.errors import InputError, MissingInputError, StaleOutputError
from lightning_less.evaluation.harness import HarnessSettings, run_harness, summarize
from lightning_less.models.loading import load_causal_lm, load_tokenizer
from lightning_less.recipes.evaluate import evaluate
from tests.evaluation import TASKS

MODEL = "builtin:tiny-llama"


def _tasks_kwargs(**kw):
    return dict(include_path=str(TASKS), include_defaults=False, batch_size=4, device="cpu", log_samples=True, **kw)


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    """One lm-eval run of the tiny model on both fixture tasks (results JSON with every sample)."""
    mp = pytest.MonkeyPatch()
    from tests.evaluation import REPO

    mp.chdir(REPO)
    out = tmp_path_factory.mktemp("eval") / "results.json"
    try:
        report = evaluate(model=MODEL, tasks=["fixture_mc", "fixture_gen"], output=str(out), **_tasks_kwargs())
    finally:
        mp.undo()
    return report, json.loads(out.read_text())["lm_eval"]


def _docs(name: str) -> list[dict]:
    return [json.loads(line) for line in (TASKS / name).read_text().splitlines()]


def _direct_loglikelihoods(model, tokenizer) -> list[list[float]]:
    """Sum of log-probs of each choice's continuation tokens given the context (transformers only)."""
    out = []
    for doc in _docs("mc.jsonl"):
        context = f"Question: {doc['question']}\nAnswer:"
        ctx_ids = tokenizer(context, add_special_tokens=False)["input_ids"]
        scores = []
        for choice in doc["choices"]:
            ids = tokenizer(context + " " + choice, add_special_tokens=False)["input_ids"]
            with torch.no_grad():
                logp = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), -1)
            scores.append(sum(logp[t - 1, ids[t]].item() for t in range(len(ctx_ids), len(ids))))
        out.append(scores)
    return out


def _lm_eval_loglikelihoods(results: dict, task: str = "fixture_mc") -> list[list[float]]:
    samples = sorted(results["samples"][task], key=lambda s: s["doc_id"])
    return [[r[0][0] for r in s["resps"]] for s in samples]


def test_multiple_choice_accuracy_equals_direct_loglikelihood(base_run):
    report, results = base_run
    model, tokenizer = load_causal_lm(MODEL).eval(), load_tokenizer(MODEL)
    direct = _direct_loglikelihoods(model, tokenizer)
    gold = [d["answer"] for d in _docs("mc.jsonl")]
    accuracy = sum(max(range(len(s)), key=s.__getitem__) == g for s, g in zip(direct, gold)) / len(gold)
    assert 0 < accuracy < 1  # the fixture separates a right from a wrong scoring
    assert report.metrics["fixture_mc/acc"] == pytest.approx(accuracy)
    for got, want in zip(_lm_eval_loglikelihoods(results), direct):
        assert got == pytest.approx(want, rel=1e-4, abs=1e-4)
    assert report.samples == {"fixture_mc": 12, "fixture_gen": 6} and report.n_shot == {"fixture_mc": 0, "fixture_gen": 0}


def test_generation_equals_greedy_decoding_and_exact_match(base_run):
    report, results = base_run
    model, tokenizer = load_causal_lm(MODEL).eval(), load_tokenizer(MODEL)
    samples = sorted(results["samples"]["fixture_gen"], key=lambda s: s["doc_id"])
    hits = []
    for doc, sample in zip(_docs("gen.jsonl"), samples):
        ids = tokenizer(doc["input"] + "\nA:", add_special_tokens=False, return_tensors="pt")["input_ids"]
        new = model.generate(ids, max_new_tokens=8, do_sample=False, pad_token_id=tokenizer.pad_token_id)[0, ids.shape[1]:]
        text = tokenizer.decode(new, skip_special_tokens=True).split("\n")[0]
        assert sample["resps"][0][0] == text
        hits.append(float(text == doc["target"]))
    assert report.metrics["fixture_gen/exact_match"] == pytest.approx(sum(hits) / len(hits))


def _random_adapter(path, seed: int = 1):
    """A LoRA adapter of the tiny model whose B matrices are not zero (so it changes the outputs)."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    peft = get_peft_model(load_causal_lm(MODEL), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0))
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    peft.save_pretrained(str(path))
    load_tokenizer(MODEL).save_pretrained(str(path))
    return path


def _merge_by_hand(adapter) -> torch.nn.Module:
    """The base model with W += (alpha / r) * B @ A, from the adapter's safetensors (no PEFT)."""
    config = json.loads((adapter / "adapter_config.json").read_text())
    weights = load_file(str(adapter / "adapter_model.safetensors"))
    model = load_causal_lm(MODEL).eval()
    params = dict(model.named_parameters())
    scale = config["lora_alpha"] / config["r"]
    for key, a in weights.items():
        if ".lora_A." not in key:
            continue
        b = weights[key.replace(".lora_A.", ".lora_B.")]
        target = key.split("base_model.model.", 1)[1].replace(".lora_A.weight", ".weight")
        with torch.no_grad():
            params[target] += scale * b @ a
    return model


def test_adapter_dir_equals_the_adapter_applied_by_hand(base_run, tmp_path, in_repo):
    adapter = _random_adapter(tmp_path / "adapter")
    out = tmp_path / "adapter.json"
    evaluate(model=MODEL, adapter=str(adapter), tasks=["fixture_mc"], output=str(out), **_tasks_kwargs())
    with_adapter = _lm_eval_loglikelihoods(json.loads(out.read_text())["lm_eval"])
    settings = HarnessSettings(tasks=["fixture_mc"], include_path=[str(TASKS)], include_defaults=False, batch_size=4, log_samples=True)
    by_hand = _lm_eval_loglikelihoods(run_harness(_merge_by_hand(adapter), load_tokenizer(MODEL), settings))
    for got, want in zip(with_adapter, by_hand):
        assert got == pytest.approx(want, rel=1e-4, abs=1e-4)
    base = _lm_eval_loglikelihoods(base_run[1])
    assert max(abs(x - y) for g, b in zip(with_adapter, base) for x, y in zip(g, b)) > 0.1  # the adapter was applied


def test_shots_and_limits_per_task(in_repo, tmp_path):
    out = tmp_path / "r.json"
    report = evaluate(model=MODEL, tasks=["fixture_mc", "fixture_gen"], num_fewshot={"fixture_mc": 2}, limit={"fixture_mc": 5},
                      output=str(out), **_tasks_kwargs())
    assert report.n_shot == {"fixture_mc": 2, "fixture_gen": 0}
    assert report.samples == {"fixture_mc": 5, "fixture_gen": 6}
    prompt = json.loads(out.read_text())["lm_eval"]["samples"]["fixture_mc"][0]["arguments"][0][0]
    assert prompt.count("Question:") == 3  # two shots, then the question
    again = evaluate(model=MODEL, tasks=["fixture_mc"], num_fewshot=1, limit=3, **_tasks_kwargs())
    assert again.n_shot == {"fixture_mc": 1} and again.samples == {"fixture_mc": 3}


def test_user_errors(in_repo, tmp_path):
    with pytest.raises(InputError, match=r"unknown lm-eval task\(s\) \['nope'\]"):
        evaluate(model=MODEL, tasks=["nope"], **_tasks_kwargs())
    with pytest.raises(MissingInputError, match="adapter_config.json"):
        evaluate(model=MODEL, adapter=str(tmp_path), tasks=["fixture_mc"], **_tasks_kwargs())
    out = tmp_path / "r.json"
    out.write_text("{}")
    with pytest.raises(StaleOutputError, match="--overwrite"):
        evaluate(model=MODEL, tasks=["fixture_mc"], output=str(out), **_tasks_kwargs())
    assert out.read_text() == "{}"


def test_summarize_flattens_and_keeps_filters_only_when_needed():
    results = {
        "results": {"t": {"acc,none": 0.5, "acc_stderr,none": "N/A", "alias": "t", "em,a": 0.25, "em,b": 0.75}},
        "groups": {"g": {"f1,none": 0.1}},
        "group_subtasks": {"g": ["t"]},
    }
    assert summarize(results, ["g"]) == {"g/f1": 0.1, "t/acc": 0.5, "t/em,a": 0.25, "t/em,b": 0.75}
    assert summarize(results, ["t"]) == {"t/acc": 0.5, "t/em,a": 0.25, "t/em,b": 0.75}



@pytest.mark.slow
def test_the_papers_task_names_exist_in_lm_eval_and_configs():
    """A renamed lm-eval group (mmlu, bbh_cot_fewshot) would break the paper's configs (indexing takes ~20 s)."""
    from lightning_less.evaluation.harness import PAPER_FEWSHOT, task_manager
    from tests.evaluation import PAPER_TASKS

    manager = task_manager(HarnessSettings(tasks=[], include_path=[str(PAPER_TASKS)]))
    assert set(PAPER_FEWSHOT) <= set(manager.all_groups)
