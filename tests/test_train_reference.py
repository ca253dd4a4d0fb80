"""``minivit train --reference`` / ``TrainConfig(reference=True)`` trains on the reference bodies."""
import minivit
from minivit import train
from minivit.cli import build_parser, train_config_from_args


def test_fit_runs_in_reference_mode_only_when_asked(monkeypatch):
    seen = []
    monkeypatch.setattr(train, "_fit", lambda cfg, *rest: seen.append(minivit.is_reference_mode()))
    train.fit(train.TrainConfig(reference=True))
    train.fit(train.TrainConfig())
    assert seen == [True, False]
    assert not minivit.is_reference_mode()           # the mode ends with the run


def test_the_reference_option_of_the_command():
    args = build_parser().parse_args(["train", "--reference"])
    assert train_config_from_args(args).reference is True
    args = build_parser().parse_args(["train"])
    assert train_config_from_args(args).reference is False


def test_a_tiny_run_in_reference_mode_matches_the_fast_one(tmp_path):
    """Two steps of a small ViT: the same losses to float32 rounding on either set of bodies."""
    losses = {}
    for ref in (False, True):
        cfg = train.TrainConfig(model="vit_cifar", epochs=1, batch_size=16, train_limit=32,
                                test_limit=16, progress=False, reference=ref,
                                model_args={"depth": 1, "embed_dim": 32, "num_heads": 2})
        logs = []
        m = train.fit(cfg, log=logs.append)
        losses[ref] = (m["train_loss"], m["test_loss"])
    assert abs(losses[True][0] - losses[False][0]) < 1e-4 * max(1.0, abs(losses[False][0]))
    assert abs(losses[True][1] - losses[False][1]) < 1e-4 * max(1.0, abs(losses[False][1]))
