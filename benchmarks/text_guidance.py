"""Cost of scored sampling of a guided latent text model against its plain pipeline, as a ratio to the NFE bound.

A Stable-Diffusion-style pipeline (UNet2DConditionModel, AutoencoderKL, CLIP text encoder) built from
configs with random weights; guidance w, T steps, DDIM. Times, at the same batch and prompts:

- ``pipeline``: the plain ``StableDiffusionPipeline`` call (prompt encoding, 2T network calls per
  sample with guidance, VAE decode), ``output_type="pt"``;
- ``scored``: ``GenerativeUncertaintyModule.predict_step`` with M weight sets and the pixel likelihood
  (prompt encoding, the kept sample and M members, every one decoded by the VAE and scored).

The NFE bound is 1 + M·T'/T (``network_evaluations_per_sample`` over T, both guided); target: scored
≤ 1.1 × bound × pipeline. Where the time goes is measured by timing the UNet, the VAE decode and the
text encoder inside each run (forward hooks; CUDA-synchronised).

Usage: python benchmarks/text_guidance.py [--device cuda] [--size tiny|sd15] [--batch N] [--steps T]
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import describe_device, median_seconds, report  # noqa: E402

from genunc_lightning.adapters import DiffusersAdapter  # noqa: E402
from genunc_lightning.laplace import DiagonalLaplacePosterior  # noqa: E402
from genunc_lightning.uncertainty import GenerativeUncertaintyModule, PixelLikelihood  # noqa: E402


def sd15_pipeline(directory: Path):  # noqa: ANN201
    """Stable Diffusion 1.5's UNet, VAE and text-encoder configs with random weights (512², 4×64² latents)."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from tests.pipelines import clip_tokenizer

    tokenizer = clip_tokenizer(directory / "tokenizer", max_length=77)
    end = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    text = CLIPTextModel(CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=768, intermediate_size=3072,
                                        num_hidden_layers=12, num_attention_heads=12, max_position_embeddings=77,
                                        bos_token_id=end - 1, eos_token_id=end, pad_token_id=end))  # fmt: skip
    unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8)  # SD 1.5's defaults
    vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), latent_channels=4, sample_size=512,
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                        layers_per_block=2)  # fmt: skip
    scheduler = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1)  # fmt: skip
    return StableDiffusionPipeline(vae=vae.eval(), text_encoder=text.eval(), tokenizer=tokenizer, unet=unet.eval(),
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)  # fmt: skip


class Timers:
    """Seconds spent inside named modules (forward pre/post hooks), CUDA-synchronised."""

    def __init__(self, modules: dict[str, torch.nn.Module], device: torch.device) -> None:
        self.seconds = dict.fromkeys(modules, 0.0)
        self.device, self._start, self._handles = device, {}, []
        for name, module in modules.items():
            self._handles.append(module.register_forward_pre_hook(lambda *_, n=name: self._begin(n)))
            self._handles.append(module.register_forward_hook(lambda *_, n=name: self._end(n)))

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _begin(self, name: str) -> None:
        self._sync()
        self._start[name] = time.perf_counter()

    def _end(self, name: str) -> None:
        self._sync()
        self.seconds[name] += time.perf_counter() - self._start[name]

    def reset(self) -> None:
        self.seconds = dict.fromkeys(self.seconds, 0.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--size", default=None, choices=["tiny", "sd15"])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--guidance", type=float, default=7.5)
    parser.add_argument("--precision", default=None, choices=["fp32", "bf16"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--member-chunk", type=int, default=None, help="weight sets per forward (default: the module's)"
    )
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    device = torch.device(args.device)
    size = args.size or ("sd15" if device.type == "cuda" else "tiny")
    steps = args.steps or 50
    precision = args.precision or ("bf16" if device.type == "cuda" else "fp32")
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        if size == "tiny":
            from tests.pipelines import tiny_stable_diffusion

            pipe = tiny_stable_diffusion(Path(tmp))
        else:
            pipe = sd15_pipeline(Path(tmp))
    pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    adapter = DiffusersAdapter.from_pipeline(pipe, guidance_scale=args.guidance, steps=steps).to(device)
    layer = adapter.last_layer_module
    fisher = {n: torch.full_like(p, 1e4, dtype=torch.float64).cpu() for n, p in layer.named_parameters()}
    posterior = DiagonalLaplacePosterior.fit(layer, adapter.last_layer, fisher, 1000, 1000.0, 1000, sigma=1.0,
                                             prior_precision=1.0)  # fmt: skip
    prompts = [f"a photograph of object {i}, detailed" for i in range(args.batch)]
    seeds = torch.arange(args.batch)
    batch = {"index": seeds, "seed": seeds, "class": seeds.clone(), "prompt": prompts}
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()
    timers = Timers({"unet": pipe.unet, "vae_decode": pipe.vae.decoder, "text_encoder": pipe.text_encoder}, device)

    def plain() -> None:
        with autocast:
            pipe(prompts, num_inference_steps=steps, guidance_scale=args.guidance, output_type="pt",
                 generator=[torch.Generator().manual_seed(int(s)) for s in seeds])  # fmt: skip

    rows = []
    timers.reset()
    plain_s = median_seconds(plain, device, repeats=args.repeats, warmup=1)
    plain_parts = {k: v / (args.repeats + 1) for k, v in timers.seconds.items()}
    for members, member_steps in ((5, steps), (1, max(1, steps // 5))):
        module = GenerativeUncertaintyModule(adapter, posterior, [PixelLikelihood()], num_members=members,
                                             member_steps=member_steps,
                                             member_chunk=args.member_chunk).to(device)  # fmt: skip

        def scored(module: GenerativeUncertaintyModule = module) -> None:
            adapter._prompt_cache.clear()  # each run encodes its prompts, as the pipeline does
            with torch.no_grad(), autocast:
                module.predict_step(batch, 0)

        timers.reset()
        scored_s = median_seconds(scored, device, repeats=args.repeats, warmup=1)
        parts = {k: v / (args.repeats + 1) for k, v in timers.seconds.items()}
        bound = module.network_evaluations_per_sample() / steps
        rows.append({
            "members": members, "member_steps": member_steps, "pipeline_s": plain_s, "scored_s": scored_s,
            "bound": bound, "ratio_to_bound": scored_s / (bound * plain_s),
            "unet_s": parts["unet"], "decode_s": parts["vae_decode"], "text_s": parts["text_encoder"],
            "pipeline_unet_s": plain_parts["unet"], "pipeline_decode_s": plain_parts["vae_decode"],
            "imgs_per_s_pipeline": args.batch / plain_s, "imgs_per_s_scored": args.batch / scored_s,
        })  # fmt: skip
    report(
        f"Guided text model ({size}, w = {args.guidance:g}, T = {steps}, batch {args.batch}, {precision}, "
        f"member_chunk {args.member_chunk or 'default'}) on "
        f"{describe_device(device)}; median of {args.repeats}",
        rows,
        [
            ("members", "M", "d"),
            ("member_steps", "T'", "d"),
            ("pipeline_s", "pipe s", ".3f"),
            ("scored_s", "scored s", ".3f"),
            ("bound", "bound", ".2f"),
            ("ratio_to_bound", "ratio", ".3f"),
            ("unet_s", "unet s", ".3f"),
            ("decode_s", "decode s", ".3f"),
            ("text_s", "text s", ".3f"),
            ("pipeline_unet_s", "pipe unet", ".3f"),
            ("pipeline_decode_s", "pipe dec", ".3f"),
        ],  # fmt: skip
        args.json,
    )


if __name__ == "__main__":
    main()
