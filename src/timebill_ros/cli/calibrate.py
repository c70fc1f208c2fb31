"""`timebill calibrate`: profile, fit, save, and print the fit's error."""
from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

import click
import yaml
from tqdm import tqdm

from timebill_ros.core.calibration import (
    Calibration,
    CalibrationError,
    CalibrationKey,
    calibrate_and_save,
    default_calibration_path,
    machine_id,
)
from timebill_ros.core.decode_step import calibration_tag
from timebill_ros.core.device import resolve_device
from timebill_ros.core.engine import EngineConfig
from timebill_ros.core.model import encode_prompt, load_model, model_fingerprint, resolve_model_path
from timebill_ros.core.predictor import load_predictor
from timebill_ros.core.timing import TimingModel
from timebill_ros.node.params import NodeParams


def params_file_values(params_file: str) -> dict:
    """The ros__parameters of a node's params file (its first node entry, e.g. `/**`)."""
    doc = yaml.safe_load(Path(params_file).read_text()) or {}
    return next(iter(doc.values()), {}).get("ros__parameters", {})


@dataclass
class CalibrationTarget:
    """What to calibrate: the same settings the node runs with."""

    model_path: str = NodeParams.model_path
    dtype: str = NodeParams.dtype
    quantization: str = NodeParams.quantization
    kv_cache_dtype: str = NodeParams.kv_cache_dtype
    threads: int = NodeParams.threads
    device: str = NodeParams.device
    prefill_chunk: int = NodeParams.prefill_chunk
    calibration_path: str = NodeParams.calibration_path
    predictor_path: str = NodeParams.predictor_path  # its slow-down of prefill is measured
    # The node never holds more than a prompt plus its answer: profiling beyond that costs
    # minutes on a real model (8k-token prefills) and buys nothing.
    max_prompt_tokens: int = NodeParams.max_prompt_tokens
    max_new_tokens: int = NodeParams.max_new_tokens

    @classmethod
    def from_sources(cls, params_file: str | None, given: dict) -> "CalibrationTarget":
        """Defaults, then the node's params file, then explicit options."""
        values = {}
        if params_file:
            params = params_file_values(params_file)
            values.update({f.name: params[f.name] for f in fields(cls) if f.name in params})
        values.update({k: v for k, v in given.items() if v is not None})
        return cls(**values)

    def key(self) -> CalibrationKey:
        """The calibration key (model fingerprint, dtype, threads, machine)."""
        name = model_fingerprint(resolve_model_path(self.model_path))
        dtype = f"{self.dtype}+{self.quantization}" if self.quantization else self.dtype
        return CalibrationKey(name, dtype, self.threads, machine_id(), str(resolve_device(self.device)),
                              calibration_tag(self.quantization))

    def path(self) -> Path:
        """Where the calibration JSON lives."""
        return Path(self.calibration_path) if self.calibration_path else default_calibration_path(self.key())


def check_calibration(target: CalibrationTarget) -> int:
    """0 when a readable calibration exists for TARGET, timed its prefill_chunk and measured
    prefill beside its length predictor, else 1 (with the reason on stderr)."""
    try:
        cal = Calibration.load(target.path())
    except CalibrationError as exc:
        click.echo(str(exc), err=True)
        return 1
    if mismatch := cal.chunk_mismatch(target.prefill_chunk):
        click.echo(f"{target.path()} does not fit: {mismatch}", err=True)
        return 1
    # The plan's prefill carries the predictor's contention (a thread beside prefill, or none
    # for a probe that reads the prefill): measured beside another predictor, it is wrong.
    if (measured := cal.settings.get("predictor_path", "")) != target.predictor_path:
        click.echo(f"{target.path()} does not fit: prefill was measured beside predictor_path '{measured}', "
                   f"not '{target.predictor_path}'", err=True)
        return 1
    click.echo(str(target.path()))
    return 0


def run_calibration(target: CalibrationTarget, points: int, repeats: int, max_length: int) -> Path:
    """Calibrate TARGET and write the JSON; returns its path."""
    loaded = load_model(target.model_path, dtype=target.dtype, threads=target.threads,
                        quantization=target.quantization, device=target.device)
    with tqdm(desc=f"calibrating {loaded.name}", unit="step") as bar:

        def progress(total: int):
            bar.reset(total=total)
            return lambda: bar.update(1)

        def predictor_for(fit: TimingModel):
            return load_predictor(target.predictor_path, fit.prefill, 64)

        longest = min(loaded.context_limit, target.max_prompt_tokens + target.max_new_tokens)
        path = target.path()
        result = calibrate_and_save(
            loaded, target.key(), path, EngineConfig(prefill_chunk=target.prefill_chunk),
            predictor_path=target.predictor_path, predictor_for=predictor_for,
            warn=lambda busy: click.echo(f"warning: {busy}", err=True), quantization=target.quantization,
            kv_dtype_pin=target.kv_cache_dtype, encode=lambda text: encode_prompt(loaded.tokenizer, text),
            stage=bar.set_description, progress=progress, points=points, repeats=repeats,
            max_length=max_length or longest)
    t = result.timing
    click.echo(f"saved {path}")
    click.echo(f"prefill(N) = {t.a:.3e}*N^2 + {t.b:.3e}*N + {t.c:.3e} s   held-out MAPE {result.prefill_mape:.2f}%")
    click.echo(f"decode(N_kv) = {t.p:.3e}*N_kv + {t.q:.3e} s          held-out MAPE {result.decode_mape:.2f}%")
    if poor := result.poor_fit_warning():
        click.echo(f"warning: {poor}", err=True)
    if choice := result.kernel_choice():
        click.echo(choice.summary())
    click.echo(f"WCET margins (bounding every sample): prefill +{100 * result.prefill_margin:.1f}% "
               f"+ {1000 * result.prefill_margin_s:.1f} ms, decode step +{100 * result.decode_margin:.1f}% "
               f"+ {1000 * result.decode_margin_s:.2f} ms; prefill beside the length predictor "
               f"x{result.prefill_contention:.2f}")
    return path
