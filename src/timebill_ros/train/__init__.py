"""Training of the embedded default model, the fine-tuned targets and the length predictors."""
from pathlib import Path


def save_without_card(model, folder: str | Path) -> None:
    """MODEL.save_pretrained into FOLDER (made if missing), without the empty model-card
    template peft writes beside an adapter: it names this machine's paths, and the folder's
    own JSON (predictor.json, timebill_recipe.json) is the card."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    (folder / "README.md").unlink(missing_ok=True)
