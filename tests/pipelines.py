"""Tiny diffusers pipelines built offline from configs (random weights), for the pipeline-equality tests."""

from __future__ import annotations

import json
from pathlib import Path

import torch


def _byte_characters() -> list[str]:
    """GPT-2's byte-to-unicode table: one printable character per byte (what CLIP's BPE reads)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = [b for b in range(256) if b not in printable]
    codes = printable + [256 + i for i in range(len(extra))]
    return [chr(c) for c in codes]


def clip_tokenizer(directory: Path, max_length: int = 16):
    """A CLIP tokenizer over single bytes (no merges), written to ``directory``: offline, no download."""
    from transformers import CLIPTokenizer

    directory.mkdir(parents=True, exist_ok=True)
    chars = _byte_characters()
    vocab = {c: i for i, c in enumerate(chars)} | {c + "</w>": len(chars) + i for i, c in enumerate(chars)}
    vocab |= {"<|startoftext|>": len(vocab), "<|endoftext|>": len(vocab) + 1}
    (directory / "vocab.json").write_text(json.dumps(vocab))
    (directory / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(str(directory / "vocab.json"), str(directory / "merges.txt"), model_max_length=max_length)


def clip_text_encoder(tokenizer, hidden: int = 32, seed: int = 0):
    """A 2-layer CLIPTextModel with random weights for ``tokenizer``."""
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    end = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    config = CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=37, num_hidden_layers=2,
                            num_attention_heads=4, max_position_embeddings=tokenizer.model_max_length,
                            projection_dim=hidden, bos_token_id=end - 1, eos_token_id=end,
                            pad_token_id=end)  # fmt: skip
    return CLIPTextModel(config).eval()


def tiny_vae(seed: int = 0, **config):
    """An AutoencoderKL with 4 latent channels and a downsampling factor of 2 (``config``: e.g. SD3's shift)."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), block_out_channels=(8, 16), latent_channels=4,
        norm_num_groups=4, sample_size=16, **config,
    ).eval()  # fmt: skip


def tiny_stable_diffusion(directory: Path, seed: int = 0):
    """A StableDiffusionPipeline of tiny parts (16² images, 8² latents, DDIM), random weights."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel

    tokenizer = clip_tokenizer(directory / "tokenizer")
    text_encoder = clip_text_encoder(tokenizer, seed=seed)
    torch.manual_seed(seed + 1)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(16, 32),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=4, norm_num_groups=8,
    ).eval()  # fmt: skip
    scheduler = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1)  # fmt: skip
    return StableDiffusionPipeline(vae=tiny_vae(seed + 2), text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)  # fmt: skip


def tiny_dit(seed: int = 0, num_classes: int = 1000):
    """A DiTPipeline of tiny parts (learned variance, 16² images, 8² latents, DDIM), random weights.

    1,000 classes: DiTPipeline hard-codes 1000 as the null class of guidance.
    """
    from diffusers import DDIMScheduler, DiTPipeline, DiTTransformer2DModel

    torch.manual_seed(seed)
    transformer = DiTTransformer2DModel(
        num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8, num_layers=1, sample_size=8,
        patch_size=2, num_embeds_ada_norm=num_classes, norm_num_groups=8,
    ).eval()  # fmt: skip
    return DiTPipeline(transformer=transformer, vae=tiny_vae(seed + 2), scheduler=DDIMScheduler(clip_sample=False))


def tiny_stable_diffusion_xl(directory: Path, seed: int = 0):
    """A StableDiffusionXLPipeline of tiny parts: two CLIP text encoders, text-time added conditioning, DDIM."""
    from diffusers import DDIMScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModelWithProjection

    tokenizer = clip_tokenizer(directory / "tokenizer")
    tokenizer_2 = clip_tokenizer(directory / "tokenizer_2")
    text_encoder = clip_text_encoder(tokenizer, seed=seed)
    torch.manual_seed(seed + 3)
    text_encoder_2 = CLIPTextModelWithProjection(clip_text_encoder(tokenizer_2, seed=seed + 3).config).eval()
    torch.manual_seed(seed + 1)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(16, 32),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=64, attention_head_dim=4, norm_num_groups=8, addition_embed_type="text_time",
        addition_time_embed_dim=8, projection_class_embeddings_input_dim=32 + 6 * 8,
    ).eval()  # fmt: skip
    scheduler = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1)  # fmt: skip
    return StableDiffusionXLPipeline(vae=tiny_vae(seed + 2), text_encoder=text_encoder, text_encoder_2=text_encoder_2,
                                     tokenizer=tokenizer, tokenizer_2=tokenizer_2, unet=unet, scheduler=scheduler,
                                     add_watermarker=False)  # fmt: skip


def t5_tokenizer():
    """A T5 tokenizer over single characters (a Unigram model built in memory): offline, no download."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import T5TokenizerFast

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -1.0)]
    pieces += [(chr(c), -2.0) for c in range(33, 127)]
    backend = Tokenizer(models.Unigram(pieces, unk_id=2))
    backend.pre_tokenizer = pre_tokenizers.Metaspace()
    backend.decoder = decoders.Metaspace()
    backend.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return T5TokenizerFast(tokenizer_object=backend, eos_token="</s>", pad_token="<pad>", unk_token="<unk>",
                           extra_ids=0, model_max_length=16)  # fmt: skip


def tiny_pixart(seed: int = 0):
    """A PixArtAlphaPipeline of tiny parts: a T5 encoder, a learned-variance transformer, DDIM."""
    from diffusers import DDIMScheduler, PixArtAlphaPipeline, PixArtTransformer2DModel
    from transformers import T5Config, T5EncoderModel

    tokenizer = t5_tokenizer()
    torch.manual_seed(seed)
    text_encoder = T5EncoderModel(T5Config(vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=37, num_layers=2,
                                           num_heads=4, relative_attention_num_buckets=8)).eval()  # fmt: skip
    torch.manual_seed(seed + 1)
    transformer = PixArtTransformer2DModel(
        sample_size=8, num_layers=1, patch_size=2, attention_head_dim=8, num_attention_heads=2, caption_channels=32,
        in_channels=4, out_channels=8, cross_attention_dim=16,
    ).eval()  # fmt: skip
    return PixArtAlphaPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=tiny_vae(seed + 2),
                               transformer=transformer, scheduler=DDIMScheduler(clip_sample=False))  # fmt: skip


def tiny_stable_diffusion_3(directory: Path, seed: int = 0):
    """A StableDiffusion3Pipeline of tiny parts: two CLIP encoders with projection, a T5, flow matching (shift 3)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextModelWithProjection, T5Config, T5EncoderModel

    tokenizers = [clip_tokenizer(directory / f"tokenizer_{i}") for i in (1, 2)]
    encoders = []
    for i, tokenizer in enumerate(tokenizers):
        torch.manual_seed(seed + 10 + i)
        encoders.append(CLIPTextModelWithProjection(clip_text_encoder(tokenizer, seed=seed + 10 + i).config).eval())
    tokenizer_3 = t5_tokenizer()
    torch.manual_seed(seed + 20)
    text_encoder_3 = T5EncoderModel(T5Config(vocab_size=len(tokenizer_3), d_model=64, d_kv=8, d_ff=37, num_layers=1,
                                             num_heads=4, relative_attention_num_buckets=8)).eval()  # fmt: skip
    torch.manual_seed(seed + 1)
    transformer = SD3Transformer2DModel(
        sample_size=8, patch_size=2, in_channels=4, num_layers=1, attention_head_dim=8, num_attention_heads=2,
        joint_attention_dim=64, caption_projection_dim=16, pooled_projection_dim=64, out_channels=4,
    ).eval()  # fmt: skip
    return StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=tiny_vae(seed + 2, scaling_factor=1.5305, shift_factor=0.0609),
        text_encoder=encoders[0], tokenizer=tokenizers[0], text_encoder_2=encoders[1], tokenizer_2=tokenizers[1],
        text_encoder_3=text_encoder_3, tokenizer_3=tokenizer_3,
    )  # fmt: skip
