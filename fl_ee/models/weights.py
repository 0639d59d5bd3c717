"""``model.weights``: start the global model from a local state-dict file.

The file is a ``torch.save`` of a state dict: of a full-depth fl-ee model of the same
config (``stages.*`` / ``exits.*`` keys, all of them, same shapes), or of torchvision's
own ``resnet`` / ``mobilenet_v2`` (``conv1.*``, ``layer1.0.*``, ``features.3.*`` ...),
whose backbone keys are mapped to this model's stages; the exit heads keep their
initial weights, and keys with no place here (the classifier, blocks past the last
exit) are ignored. It is read with ``weights_only=True``: tensors only, no code.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping

import torch

from fl_ee.core.cache import one_line
from fl_ee.core.config import NOT_TENSORS, SAVE_WEIGHTS
from fl_ee.core.errors import UserError
from fl_ee.models.network import EarlyExitNet

KEY = "model.weights"



def read_state(path: str) -> dict[str, torch.Tensor]:
    """The state dict saved in ``path``; anything else is a :class:`UserError`.

    Only tensors are ever loaded (``weights_only=True``): a file that holds other objects
    (a pickled class, code) or foreign bytes is refused in one line, and torch's own
    warnings and advice (to turn the safe loader off) are not passed on.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's notes on the file's pickle protocol; the error says what counts
            state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(f"{path}: no such file", key=KEY) from None
    except OSError as exc:
        raise UserError(f"{path}: cannot be read: {exc.strerror or one_line(exc)}", key=KEY) from None
    except Exception as exc:  # foreign bytes fail torch.load in many ways: UnpicklingError, RuntimeError, KeyError...
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        what = f"it holds {found[1]}" if found else "it is not a torch.save file of tensors"
        raise UserError(f"{path}: {NOT_TENSORS} ({what}; fl-ee loads tensors only, "
                        f"never other objects); {SAVE_WEIGHTS}", key=KEY) from None
    if not isinstance(state, Mapping) or not state or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise UserError(f"{path}: holds no state dict (a mapping of names to tensors); {SAVE_WEIGHTS}", key=KEY)
    return dict(state)


def renamed(state: Mapping[str, torch.Tensor], names: Mapping[str, str]) -> dict[str, torch.Tensor]:
    """Torchvision keys renamed by module prefix (``layer1.0.conv1.weight`` -> ``stages.0.4.conv1.weight``)."""
    out = {}
    for key, value in state.items():
        parts = key.split(".")
        for n in (2, 1):  # "layer1.0" / "features.3" before "conv1" / "bn1"
            prefix = ".".join(parts[:n])
            if prefix in names and len(parts) > n:
                out[names[prefix] + key[len(prefix):]] = value
                break
    return out


def load_weights(model: EarlyExitNet, path: str) -> None:
    """Load ``path`` into ``model``: a mismatched key or shape is one line naming the file and the key."""
    state, own = read_state(path), model.state_dict()
    if any(k.startswith(("stages.", "exits.")) for k in state):
        extra = sorted(set(state) - set(own))
        if extra:
            raise UserError(f"{path}: {extra[0]} has no place in this model ({len(extra)} such keys); "
                            f"save the state of a full-depth model of the same config", key=KEY)
        wanted = list(own)
    else:
        state = renamed(state, model.torchvision_names)
        wanted = [k for k in own if k.startswith("stages.")]
    missing = [k for k in wanted if k not in state]
    if missing:
        raise UserError(f"{path}: no {missing[0]} for this model ({len(missing)} of its {len(wanted)} tensors "
                        f"missing)", key=KEY)
    for k in wanted:
        if state[k].shape != own[k].shape:
            raise UserError(f"{path}: {k} is {list(state[k].shape)} in the file but {list(own[k].shape)} "
                            f"in this model", key=KEY)
    model.load_state_dict({**own, **{k: state[k].to(own[k].dtype) for k in wanted}})
