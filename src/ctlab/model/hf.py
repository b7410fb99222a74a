"""Hugging Face checkpoints: ctlab models saved so transformers loads them, and HF models imported.

A checkpoint folder holds ``config.json``, ``model.safetensors`` and (when given) the tokenizer.
Dense models save as ``LlamaForCausalLM`` (no q/k/v bias) or ``Qwen2ForCausalLM`` (q/k/v bias);
MoE models as ``Qwen2MoeForCausalLM`` (experts in the per-expert layout that transformers 4 and
5, vLLM and lm-eval read). ``config.json`` also carries the full ctlab config under ``"ctlab"``,
so ctlab reloads exactly what it saved. MH-MoE has no transformers class: its config names the
architecture ``CtlabMultiHeadMoE`` and says so under ``"note"``.

Fused ctlab projections (q/k/v, gate/up) are split on save and fused on load.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save

from ctlab.errors import UserError
from ctlab.model.config import ModelConfig
from ctlab.model.decoder import Decoder
from ctlab.runs import atomic_write, latest_checkpoint, read_json, write_json
from ctlab.tokenizer.load import TOKENIZER_FILES

MHMOE_NOTE = (
    "MH-MoE (arXiv 2404.15045) has no transformers class: load this checkpoint with "
    "ctlab.model.hf.load_model, not transformers.AutoModelForCausalLM"
)


def architecture(config: ModelConfig) -> str:
    if config.ffn == "mhmoe":
        return "CtlabMultiHeadMoE"
    if config.ffn == "moe":
        return "Qwen2MoeForCausalLM"
    return "Qwen2ForCausalLM" if config.qkv_bias else "LlamaForCausalLM"


def hf_config(config: ModelConfig) -> dict:
    """config.json content for ``config``, built with transformers' own config classes."""
    common = {
        "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size,
        "num_hidden_layers": config.num_layers,
        "num_attention_heads": config.num_heads,
        "num_key_value_heads": config.num_kv_heads,
        "max_position_embeddings": config.max_position_embeddings,
        "rms_norm_eps": config.rms_norm_eps,
        "rope_parameters": {"rope_type": "default", "rope_theta": config.rope_theta},
        "tie_word_embeddings": config.tie_embeddings,
        "initializer_range": config.init_std,
        "hidden_act": "silu",
        "bos_token_id": config.bos_token_id,
        "eos_token_id": config.eos_token_id,
        "pad_token_id": config.pad_token_id,
    }
    name = architecture(config)
    if name == "CtlabMultiHeadMoE":
        data = {"architectures": [name], "model_type": "ctlab_mhmoe", "note": MHMOE_NOTE, **common}
    else:
        from transformers import LlamaConfig, Qwen2Config, Qwen2MoeConfig

        if name == "LlamaForCausalLM":
            hf = LlamaConfig(**common, head_dim=config.head_dim, attention_bias=False, mlp_bias=False)
        elif name == "Qwen2ForCausalLM":
            hf = Qwen2Config(**common, head_dim=config.head_dim)
        else:
            hf = Qwen2MoeConfig(
                **common,
                num_experts=config.num_experts,
                num_experts_per_tok=config.experts_per_token,
                moe_intermediate_size=config.expert_intermediate_size,
                shared_expert_intermediate_size=config.shared_expert_intermediate_size or 1,  # see to_hf_state
                norm_topk_prob=config.norm_topk_prob,
                decoder_sparse_step=config.decoder_sparse_step,
                mlp_only_layers=list(config.mlp_only_layers),
                router_aux_loss_coef=config.router_aux_loss_coef,
                qkv_bias=config.qkv_bias,
                head_dim=config.head_dim,
            )
        hf.architectures = [name]
        data = hf.to_dict()
        data["torch_dtype"] = "float32"
    data["ctlab"] = config.to_dict()
    return data


def _split_rows(tensor: torch.Tensor, sizes: list[int]) -> list[torch.Tensor]:
    return [t.contiguous() for t in tensor.split(sizes, dim=0)]


def to_hf_state(config: ModelConfig, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A ctlab state dict under transformers' names (MH-MoE: ctlab's own names)."""
    state = {k: v.detach().contiguous() for k, v in state_dict.items()}
    if config.ffn == "mhmoe":
        if config.tie_embeddings:
            state.pop("lm_head.weight", None)
        return state
    q_size, kv_size = config.num_heads * config.head_dim, config.num_kv_heads * config.head_dim
    out = {"model.embed_tokens.weight": state["embed_tokens.weight"], "model.norm.weight": state["norm.weight"]}
    if not config.tie_embeddings:
        out["lm_head.weight"] = state["lm_head.weight"]
    for i in range(config.num_layers):
        src, dst = f"layers.{i}.", f"model.layers.{i}."
        out[dst + "input_layernorm.weight"] = state[src + "input_norm.weight"]
        out[dst + "post_attention_layernorm.weight"] = state[src + "ffn_norm.weight"]
        q, k, v = _split_rows(state[src + "attention.qkv_proj.weight"], [q_size, kv_size, kv_size])
        out.update({dst + "self_attn.q_proj.weight": q, dst + "self_attn.k_proj.weight": k})
        out[dst + "self_attn.v_proj.weight"] = v
        bias = state.get(src + "attention.qkv_proj.bias")
        if bias is not None:
            for name, part in zip("qkv", _split_rows(bias, [q_size, kv_size, kv_size]), strict=True):
                out[dst + f"self_attn.{name}_proj.bias"] = part
        out[dst + "self_attn.o_proj.weight"] = state[src + "attention.o_proj.weight"]
        if not config.is_sparse(i):
            gate, up = state[src + "ffn.gate_up_proj.weight"].chunk(2, dim=0)
            out[dst + "mlp.gate_proj.weight"], out[dst + "mlp.up_proj.weight"] = gate.contiguous(), up.contiguous()
            out[dst + "mlp.down_proj.weight"] = state[src + "ffn.down_proj.weight"]
            continue
        out[dst + "mlp.gate.weight"] = state[src + "ffn.router.weight"]
        gate_up, down = state[src + "ffn.experts.gate_up_proj"], state[src + "ffn.experts.down_proj"]
        for e in range(config.num_experts):
            gate, up = gate_up[e].chunk(2, dim=0)
            out[dst + f"mlp.experts.{e}.gate_proj.weight"] = gate.contiguous()
            out[dst + f"mlp.experts.{e}.up_proj.weight"] = up.contiguous()
            out[dst + f"mlp.experts.{e}.down_proj.weight"] = down[e].contiguous()
        shared = config.shared_expert_intermediate_size
        if shared:
            gate, up = state[src + "ffn.shared_expert.gate_up_proj.weight"].chunk(2, dim=0)
            down = state[src + "ffn.shared_expert.down_proj.weight"]
            gate_weight = state[src + "ffn.shared_expert_gate.weight"]
        else:  # transformers' Qwen2-MoE always has a shared expert: a zero one of width 1 adds exactly
            # nothing (a zero-width one would leave empty tensors that transformers takes for tied weights)
            gate, up = torch.zeros(1, config.hidden_size), torch.zeros(1, config.hidden_size)
            down, gate_weight = torch.zeros(config.hidden_size, 1), torch.zeros(1, config.hidden_size)
        out[dst + "mlp.shared_expert.gate_proj.weight"] = gate.contiguous()
        out[dst + "mlp.shared_expert.up_proj.weight"] = up.contiguous()
        out[dst + "mlp.shared_expert.down_proj.weight"] = down.contiguous()
        out[dst + "mlp.shared_expert_gate.weight"] = gate_weight
    return out


def save_pretrained(
    model: Decoder,
    out_dir: str | Path,
    tokenizer_dir: str | Path | None = None,
    state_dict: dict[str, torch.Tensor] | None = None,
) -> None:
    """Write ``out_dir``: config.json, model.safetensors (fp32) and the tokenizer's files.
    ``state_dict``: the weights to write when ``model`` holds only a shard of them (FSDP)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    weights = to_hf_state(model.config, model.state_dict() if state_dict is None else state_dict)
    state = {k: v.float() for k, v in weights.items()}
    atomic_write(out / "model.safetensors", lambda f: f.write(save(state, metadata={"format": "pt"})))
    copy_tokenizer(tokenizer_dir, out)
    write_json(out / "config.json", hf_config(model.config))


def tokenizer_files(tokenizer_dir: str | Path | None) -> list[Path]:
    """The tokenizer's files in ``tokenizer_dir`` (a tokenizer folder, or a model folder that
    carries one), which a model folder copies: never weights, configs or training records."""
    if tokenizer_dir is None:
        return []
    return [p for p in sorted(Path(tokenizer_dir).iterdir()) if p.is_file() and p.name in TOKENIZER_FILES]


def copy_tokenizer(tokenizer_dir: str | Path | None, out_dir: str | Path) -> None:
    """Copy the tokenizer into ``out_dir``, so ``AutoTokenizer.from_pretrained(out_dir)`` loads it."""
    for path in tokenizer_files(tokenizer_dir):
        shutil.copyfile(path, Path(out_dir) / path.name)


def config_from_hf(data: dict) -> ModelConfig:
    """A ctlab config from a config.json (ctlab's own section, or a Llama / Qwen2 / Qwen2-MoE one)."""
    if not isinstance(data, dict):
        raise UserError("config.json is not a mapping of settings")
    if "ctlab" in data:
        return ModelConfig.from_dict(data["ctlab"], "config.json: ctlab")
    try:
        return ModelConfig.from_dict(_imported_fields(data), "config.json")
    except KeyError as err:
        raise UserError(f"config.json of a {data.get('model_type')} checkpoint lacks {err.args[0]!r}") from None


def _imported_fields(data: dict) -> dict:
    """ModelConfig fields from a transformers config.json."""
    model_type = data.get("model_type")
    if model_type not in ("llama", "qwen2", "qwen2_moe"):
        raise UserError(f"cannot import model_type {model_type!r} (llama, qwen2 and qwen2_moe can be imported)")
    rope = data.get("rope_parameters") or {}
    theta = rope.get("rope_theta", data.get("rope_theta", 10000.0))
    if rope.get("rope_type", "default") != "default" or data.get("rope_scaling"):
        raise UserError("only the default rotary embedding can be imported (no rope scaling)")
    if model_type == "llama" and (data.get("attention_bias") or data.get("mlp_bias")):
        raise UserError("Llama checkpoints with attention or MLP biases cannot be imported")
    fields = {
        "vocab_size": data["vocab_size"],
        "hidden_size": data["hidden_size"],
        "intermediate_size": data["intermediate_size"],
        "num_layers": data["num_hidden_layers"],
        "num_heads": data["num_attention_heads"],
        "num_kv_heads": data.get("num_key_value_heads") or data["num_attention_heads"],
        "head_dim": data.get("head_dim"),
        "max_position_embeddings": data.get("max_position_embeddings", 2048),
        "rope_theta": float(theta),
        "rms_norm_eps": data.get("rms_norm_eps", 1e-6),
        "tie_embeddings": bool(data.get("tie_word_embeddings", False)),
        "init_std": data.get("initializer_range", 0.02),
        "qkv_bias": model_type == "qwen2" or (model_type == "qwen2_moe" and data.get("qkv_bias", True)),
        "bos_token_id": data.get("bos_token_id"),
        "eos_token_id": data.get("eos_token_id"),
        "pad_token_id": data.get("pad_token_id"),
    }
    if isinstance(fields["eos_token_id"], list):
        fields["eos_token_id"] = fields["eos_token_id"][0]
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):  # transformers allows -1 and the like
        if not (isinstance(fields[name], int) and 0 <= fields[name] < fields["vocab_size"]):
            fields[name] = None
    if model_type == "qwen2_moe":
        fields.update(
            ffn="moe",
            num_experts=data["num_experts"],
            experts_per_token=data["num_experts_per_tok"],
            expert_intermediate_size=data["moe_intermediate_size"],
            shared_expert_intermediate_size=data.get("shared_expert_intermediate_size", 0),
            norm_topk_prob=bool(data.get("norm_topk_prob", False)),
            decoder_sparse_step=data.get("decoder_sparse_step", 1),
            mlp_only_layers=list(data.get("mlp_only_layers") or []),
            router_aux_loss_coef=data.get("router_aux_loss_coef", 0.001),
        )
    return fields


def from_hf_state(state: dict[str, torch.Tensor], config: ModelConfig) -> dict[str, torch.Tensor]:
    """transformers' weight names (per-expert or stacked experts) → a ctlab state dict."""
    if config.ffn == "mhmoe":
        if config.tie_embeddings:
            state = {**state, "lm_head.weight": state["embed_tokens.weight"]}
        return state
    out = {"embed_tokens.weight": state["model.embed_tokens.weight"], "norm.weight": state["model.norm.weight"]}
    out["lm_head.weight"] = state["model.embed_tokens.weight" if config.tie_embeddings else "lm_head.weight"]
    for i in range(config.num_layers):
        src, dst = f"model.layers.{i}.", f"layers.{i}."
        out[dst + "input_norm.weight"] = state[src + "input_layernorm.weight"]
        out[dst + "ffn_norm.weight"] = state[src + "post_attention_layernorm.weight"]
        attn = src + "self_attn."
        out[dst + "attention.qkv_proj.weight"] = torch.cat([state[attn + f"{n}_proj.weight"] for n in "qkv"])
        if config.qkv_bias:
            out[dst + "attention.qkv_proj.bias"] = torch.cat([state[attn + f"{n}_proj.bias"] for n in "qkv"])
        out[dst + "attention.o_proj.weight"] = state[attn + "o_proj.weight"]
        mlp = src + "mlp."
        if not config.is_sparse(i):
            out[dst + "ffn.gate_up_proj.weight"] = torch.cat(
                [state[mlp + "gate_proj.weight"], state[mlp + "up_proj.weight"]]
            )
            out[dst + "ffn.down_proj.weight"] = state[mlp + "down_proj.weight"]
            continue
        out[dst + "ffn.router.weight"] = state[mlp + "gate.weight"]
        if mlp + "experts.gate_up_proj" in state:  # transformers 5's stacked layout
            out[dst + "ffn.experts.gate_up_proj"] = state[mlp + "experts.gate_up_proj"]
            out[dst + "ffn.experts.down_proj"] = state[mlp + "experts.down_proj"]
        else:
            experts = range(config.num_experts)
            out[dst + "ffn.experts.gate_up_proj"] = torch.stack(
                [
                    torch.cat(
                        [state[mlp + f"experts.{e}.gate_proj.weight"], state[mlp + f"experts.{e}.up_proj.weight"]]
                    )
                    for e in experts
                ]
            )
            out[dst + "ffn.experts.down_proj"] = torch.stack(
                [state[mlp + f"experts.{e}.down_proj.weight"] for e in experts]
            )
        if config.shared_expert_intermediate_size:
            shared = mlp + "shared_expert."
            out[dst + "ffn.shared_expert.gate_up_proj.weight"] = torch.cat(
                [state[shared + "gate_proj.weight"], state[shared + "up_proj.weight"]]
            )
            out[dst + "ffn.shared_expert.down_proj.weight"] = state[shared + "down_proj.weight"]
            out[dst + "ffn.shared_expert_gate.weight"] = state[mlp + "shared_expert_gate.weight"]
    return out


def read_weights(
    folder: str | Path, config: ModelConfig, device: str | torch.device = "cpu"
) -> dict[str, torch.Tensor]:
    """The ctlab state dict of the safetensors files in ``folder`` (a :class:`UserError` for a
    missing, damaged or incomplete file)."""
    from safetensors import SafetensorError

    folder = Path(folder)
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise UserError(f"{folder} holds no .safetensors weights")
    state: dict[str, torch.Tensor] = {}
    for path in files:
        try:
            state.update(load_file(path, device=str(device)))
        except (SafetensorError, OSError) as err:
            raise UserError(f"{path} is damaged or truncated ({err})") from None
    try:
        return from_hf_state(state, config)
    except KeyError as err:
        raise UserError(f"{folder} lacks the weight {err.args[0]} its config.json calls for") from None


def load_model(path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> Decoder:
    """The model of a checkpoint folder, of a run folder (its latest checkpoint), or of a
    Hugging Face checkpoint of a supported architecture (Llama, Qwen2, Qwen2-MoE).

    The decoder is built on the meta device and takes the file's tensors as its parameters, on
    ``device`` and in ``dtype`` whatever the file holds (fp32 unless asked): no random
    initialisation, no second copy.
    """
    folder = latest_checkpoint(path)
    config = config_from_hf(read_json(folder / "config.json", "a model checkpoint"))
    state = read_weights(folder, config, device)
    state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    with torch.device("meta"):
        model = Decoder(config)
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as err:
        raise UserError(f"{folder}: the weights do not fit its config.json ({str(err).splitlines()[0]})") from None
    if config.tie_embeddings:
        model.lm_head.weight = model.embed_tokens.weight
    return model
