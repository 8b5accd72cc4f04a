"""The adapter's README.md and an export's are loratune's model card, in the Hugging Face format: metadata the hub
reads (huggingface_hub's ModelCard parses it), the scores before and after, and how to load the model."""

from __future__ import annotations

import json

from huggingface_hub import ModelCard

from loratune.export.plain import export_run


def test_the_run_adapter_readme_is_a_model_card_with_its_metadata_and_scores(bert_run):
    card = ModelCard.load(bert_run.run_dir / "adapter" / "README.md")
    meta = card.data.to_dict()
    assert meta["library_name"] == "peft" and meta["pipeline_tag"] == "text-classification"
    assert set(meta["metrics"]) == {"accuracy", "f1"} and "loratune" in meta["tags"]
    results = {r.metric_type: r.metric_value for r in card.data.eval_results}
    assert results["accuracy"] == round(bert_run.summary.after.accuracy, 4)
    assert "More Information Needed" not in card.text
    for section in ("## How to use", "## Results", "## Data", "## Training", "## Intended use and limits"):
        assert section in card.text
    assert f"{bert_run.summary.before.accuracy:.4f}" in card.text and "PeftModel.from_pretrained" in card.text


def test_the_card_names_a_hub_base_model_in_its_metadata(bert_run, tmp_path):
    import shutil

    from loratune.report.model_card import model_card
    from loratune.runs.folder import RunFolder

    run = RunFolder.open(shutil.copytree(bert_run.run_dir, tmp_path / "run"))
    run.config.model.__dict__["name_or_path"] = "sentence-transformers/all-MiniLM-L6-v2"  # as a hub run records it
    meta = ModelCard(model_card(run, "peft", "usage")).data.to_dict()
    assert meta["base_model"] == "sentence-transformers/all-MiniLM-L6-v2"


def test_exports_carry_the_card_too(bert_run, tmp_path):
    for adapter_only, library in ((False, "transformers"), (True, "peft")):
        folder = export_run(bert_run.run_dir, tmp_path / library, adapter_only=adapter_only)
        card = ModelCard.load(folder / "README.md")
        assert card.data.to_dict()["library_name"] == library
        assert "## Results" in card.text and ("pipeline(" in card.text) == (not adapter_only)
        assert json.loads((folder / "labels.json").read_text()) == bert_run.summary.labels
