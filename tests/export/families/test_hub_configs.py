"""Hub checkpoints of native families whose config.json carries an auto_map (remote code) beside a model_type that
transformers 5.25 implements: built with transformers' own class, the auto_map set aside as data (its code never
imported) and reported; the one whose model_type transformers does not implement is refused in one line with the
reason. Their first implementation's own config fields must agree with what transformers' class computes.

The fields copied below (model_type, architectures, auto_map, and the first implementation's fields) are the
published config.json files' (read through the public web index; the hub itself is not reachable here):
- Snowflake/snowflake-arctic-embed-m-v2.0: huggingface.co/Snowflake/snowflake-arctic-embed-m-v2.0/blob/main/config.json
- nomic-ai/nomic-embed-text-v1.5: as its fine-tunes copy it ("_name_or_path": "nomic-ai/nomic-embed-text-v1.5",
  huggingface.co/Mollel/MultiLinguSwahili-nomic-embed-text-v1.5-nli-matryoshka/blob/main/config.json and
  RinaChen/Guwen-nomic-embed-text-v1.5); the original's own history (blame at 6ce67c1) has the same fields; its
  latest revision adds four more auto_map heads into the same repository
- EuroBERT/EuroBERT-210m: huggingface.co/EuroBERT/EuroBERT-210m/blob/refs%2Fpr%2F4/config.json
- Alibaba-NLP/gte-multilingual-base: as its fine-tunes copy it ("_name_or_path": "Alibaba-NLP/gte-multilingual-base",
  huggingface.co/louisbrulenaudet/lemone-embed-pro/raw/main/config.json)
- Snowflake/snowflake-arctic-embed-m-long (a nomic_bert checkpoint with rotary_scaling_factor 2):
  huggingface.co/Snowflake/snowflake-arctic-embed-m-long/blob/main/config.json
Their weights are not reachable: the tiny random checkpoints of tests/fixtures/hf_checkpoints.py carry the fields.
"""

from __future__ import annotations

import json
import shutil
import sys

import pytest
import torch

from export.build import main as build
from export.checkpoint.rebuild import load_checkpoint
from export.errors import UsageError
from export.families.registry import by_name
from export.report.persist import read_report
from tests.fixtures.tiny_build import build_args
from tests.helpers import one_line

NOMIC_CODE = "nomic-ai/nomic-bert-2048--modeling_hf_nomic_bert"
NEW_IMPL = "Alibaba-NLP/new-impl--modeling"
HUB = {  # name -> (family, task the architectures name, the hub config's fields)
    "arctic-embed-m-v2.0": (
        "gte",
        "model",
        {
            "model_type": "gte",
            "architectures": ["GteModel"],
            "auto_map": {
                "AutoConfig": "configuration_hf_alibaba_nlp_gte.GteConfig",
                "AutoModel": "modeling_hf_alibaba_nlp_gte.GteModel",
            },
        },
    ),
    "nomic-embed-text-v1.5": (
        "nomic_bert",
        "model",
        {
            "model_type": "nomic_bert",
            "architectures": ["NomicBertModel"],
            "auto_map": {
                "AutoConfig": "nomic-ai/nomic-bert-2048--configuration_hf_nomic_bert.NomicBertConfig",
                "AutoModel": f"{NOMIC_CODE}.NomicBertModel",
                "AutoModelForMaskedLM": f"{NOMIC_CODE}.NomicBertForPreTraining",
            },
        },
    ),
    "EuroBERT-210m": (
        "eurobert",
        "masked-lm",
        {
            "model_type": "eurobert",
            "architectures": ["EuroBertForMaskedLM"],
            "auto_map": {
                "AutoConfig": "configuration_eurobert.EuroBertConfig",
                "AutoModel": "modeling_eurobert.EuroBertModel",
                "AutoModelForPreTraining": "modeling_eurobert.EuroBertPreTrainedModel",
                "AutoModelForMaskedLM": "modeling_eurobert.EuroBertForMaskedLM",
                "AutoModelForSequenceClassification": "modeling_eurobert.EuroBertForSequenceClassification",
            },
        },
    ),
}
GTE_MULTILINGUAL = {
    "model_type": "new",
    "architectures": ["NewModel"],
    "auto_map": {
        "AutoConfig": "Alibaba-NLP/new-impl--configuration.NewConfig",
        "AutoModel": f"{NEW_IMPL}.NewModel",
        "AutoModelForMaskedLM": f"{NEW_IMPL}.NewForMaskedLM",
        "AutoModelForMultipleChoice": f"{NEW_IMPL}.NewForMultipleChoice",
        "AutoModelForQuestionAnswering": f"{NEW_IMPL}.NewForQuestionAnswering",
        "AutoModelForSequenceClassification": f"{NEW_IMPL}.NewForSequenceClassification",
        "AutoModelForTokenClassification": f"{NEW_IMPL}.NewForTokenClassification",
    },
    "rope_scaling": {"factor": 8.0, "type": "ntk"},
    "rope_theta": 20000,
}
TRAP = "raise SystemExit('the checkpoint's own code was imported')\n"


def hub_folder(hf_ckpt, tmp_path, family: str, task: str, fields: dict):
    """The tiny checkpoint of `family` with the hub config's fields written into its config.json, and, for an auto_map
    into the folder itself, that folder's code files as traps (importing them ends the process)."""
    src, model = hf_ckpt(family, task)
    folder = tmp_path / "ckpt"
    shutil.copytree(src, folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **fields}))
    for target in fields.get("auto_map", {}).values():
        if "--" not in target:
            (folder / f"{target.split('.')[0]}.py").write_text(TRAP)
    return folder, model


@pytest.mark.parametrize("name", sorted(HUB))
def test_a_hub_config_with_auto_map_loads_with_transformers_own_class(hf_ckpt, tmp_path, name):
    family, task, fields = HUB[name]
    folder, model = hub_folder(hf_ckpt, tmp_path, family, task, fields)
    ck = load_checkpoint(folder)
    assert ck.family is by_name(family) and ck.task == task and ck.auto_map_ignored == fields["auto_map"]
    assert type(ck.model).__module__.startswith("transformers.models.") and not hasattr(ck.config, "auto_map")
    assert not [m for m in sys.modules if m.startswith("transformers_modules") or "hf_alibaba" in m]
    assert type(ck.model) is type(model)  # the same class, holding exactly the checkpoint's weights
    got = ck.model.state_dict()
    assert all(torch.equal(got[k], v) for k, v in model.state_dict().items())


def test_the_build_reports_the_ignored_auto_map(hf_ckpt, tmp_path):
    family, task, fields = HUB["nomic-embed-text-v1.5"]
    folder, _ = hub_folder(hf_ckpt, tmp_path, family, task, fields)
    out = tmp_path / "out"
    assert build(build_args(folder, out)) == 0
    assert read_report(out).checkpoint["auto_map_ignored"] == fields["auto_map"]
    assert "auto_map (code in nomic-ai/nomic-bert-2048) was ignored" in (out / "report.md").read_text()


def test_a_model_type_transformers_does_not_implement_is_refused_in_one_line(hf_ckpt, tmp_path, capsys):
    """gte-multilingual-base as published: model_type "new", Alibaba-NLP/new-impl's code (transformers 5.25 has no
    "new"): refused before anything is built, naming the code's repository and how transformers reads GTE."""
    folder, _ = hub_folder(hf_ckpt, tmp_path, "gte", "model", GTE_MULTILINGUAL)
    out = tmp_path / "out"
    assert build(["--model", str(folder), "--out", str(out)]) == 2
    err = one_line(capsys)
    assert "config has auto_map (code in Alibaba-NLP/new-impl)" in err and "model_type 'new'" in err, err
    assert "as model_type gte with rope_parameters" in err and not out.exists()


NOMIC_V15 = {  # nomic-embed-text-v1.5's own fields, its sizes replaced by the tiny config's
    "activation_function": "swiglu",
    "causal": False,
    "layer_norm_epsilon": 1e-12,
    "max_trained_positions": 2048,
    "mlp_fc1_bias": False,
    "mlp_fc2_bias": False,
    "n_embd": 32,
    "n_head": 2,
    "n_inner": 37,
    "n_layer": 2,
    "n_positions": 8192,
    "parallel_block": False,
    "prenorm": False,
    "qkv_proj_bias": False,
    "rotary_emb_base": 1000,
    "rotary_emb_fraction": 1.0,
    "rotary_emb_interleaved": False,
    "rotary_emb_scale_base": None,
    "rotary_scaling_factor": None,
}
ARCTIC_V2 = {  # arctic-embed-m-v2.0's own fields (Alibaba's code), rope_* instead of rope_parameters
    "layer_norm_type": "layer_norm",
    "logn_attention_clip1": False,
    "logn_attention_scale": False,
    "pack_qkv": True,
    "position_embedding_type": "rope",
    "rope_scaling": None,
    "rope_theta": 160000,
    "unpad_inputs": "true",
    "use_memory_efficient_attention": "true",
}


@pytest.mark.parametrize(
    "family,fields,change,fragment",
    [
        pytest.param("nomic_bert", NOMIC_V15, {}, None, id="nomic-v1.5"),
        pytest.param("nomic_bert", NOMIC_V15, {"n_embd": 768}, "config n_embd is 768 (its first", id="n_embd"),
        pytest.param("nomic_bert", NOMIC_V15, {"rotary_emb_base": 10000}, "reads rope_theta, which is 1000", id="base"),
        pytest.param(
            "nomic_bert", NOMIC_V15, {"rotary_scaling_factor": 2}, "factor is 2: the original code's dynamic NTK",
            id="arctic-m-long-scaling",
        ),
        pytest.param("nomic_bert", NOMIC_V15, {"activation_function": "gelu"}, "an MLP other than SwiGLU", id="gelu"),
        pytest.param("gte", ARCTIC_V2, {}, None, id="arctic-v2.0"),
        pytest.param("gte", ARCTIC_V2, {"logn_attention_scale": True}, "True: log-n scaling", id="logn"),
        pytest.param("gte", ARCTIC_V2, {"position_embedding_type": "absolute"}, "type is 'absolute'", id="absolute"),
        pytest.param("eurobert", {"clf_pooling": "late"}, {}, None, id="clf_pooling-late"),
        pytest.param("eurobert", {"clf_pooling": "bos"}, {}, "clf_pooling is 'bos' (its first", id="clf_pooling"),
    ],
)  # fmt: skip
def test_the_first_implementations_fields_agree_with_the_class_or_are_refused(family, fields, change, fragment):
    fam = by_name(family)
    config = {**fam.tiny().to_dict(), **fields, **change}
    if "rope_theta" in fields:  # arctic writes no rope_parameters: transformers converts its rope_theta itself
        config.pop("rope_parameters")
    if fragment is None:
        cfg = fam.make_config(config, "c.json")
        assert fields.get("rope_theta") in (None, fam.rotaries(cfg)[0].table.theta)
        return
    with pytest.raises(UsageError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        fam.make_config(config, "c.json")
