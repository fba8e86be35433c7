"""Prompts and guidance (issue 21): text-to-image and guided models from the user's own diffusers pipeline.

Every pipeline is built offline from configs inside the tests (tests/pipelines.py): tiny networks with
random weights, a byte-level CLIP tokenizer written to a temporary folder.
"""

import csv
import json

import pytest
import torch

pytest.importorskip("transformers")

from lightning.pytorch import Trainer  # noqa: E402

from genunc_lightning.adapters import DiffusersAdapter  # noqa: E402
from genunc_lightning.adapters.base import Condition  # noqa: E402
from genunc_lightning.data import PromptDataModule, SeedDataModule  # noqa: E402
from genunc_lightning.experiments.runs import fit_posterior  # noqa: E402
from genunc_lightning.uncertainty import GenerativeUncertaintyModule, PixelLikelihood, ScoredSampleWriter  # noqa: E402
from genunc_lightning.uncertainty.run_directory import read_manifest, read_prompts, read_shards  # noqa: E402
from tests.pipelines import tiny_dit, tiny_stable_diffusion  # noqa: E402

CAPTIONS = ["a red cat", "two dogs, running", 'the "blue" door', "a cat"]


@pytest.fixture(scope="module")
def sd(tmp_path_factory):
    return tiny_stable_diffusion(tmp_path_factory.mktemp("sd"))


@pytest.fixture(scope="module")
def pairs():
    """(image, caption) training pairs: 8 random 16² images in [−1, 1]."""
    images = torch.rand(8, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    return [(images[i], CAPTIONS[i % len(CAPTIONS)]) for i in range(8)]


@pytest.fixture(scope="module")
def sd_posterior(sd, pairs):
    return fit_posterior(DiffusersAdapter.from_pipeline(sd, steps=4), pairs, batch_size=4)


def _trainer(**kwargs):
    return Trainer(accelerator="cpu", devices=1, logger=False, enable_model_summary=False,
                   enable_checkpointing=False, enable_progress_bar=False, **kwargs)  # fmt: skip


def _predict(adapter, posterior, data, out, **module_kwargs):
    module = GenerativeUncertaintyModule(adapter, posterior, [PixelLikelihood()], num_members=2, **module_kwargs)
    _trainer(callbacks=[ScoredSampleWriter(str(out))]).predict(module, datamodule=data, return_predictions=False)
    with (out / "scores.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    return rows, read_shards(out)


@pytest.mark.parametrize("guidance", [1.0, 5.0])
def test_a_kept_sample_is_the_stable_diffusion_pipelines_own_image(sd, sd_posterior, tmp_path, guidance):
    """Row → pipe(prompt, guidance, steps, generator=manual_seed(row's seed)) gives the kept sample (≤ 1e-4)."""
    adapter = DiffusersAdapter.from_pipeline(sd, guidance_scale=guidance, steps=4)
    data = PromptDataModule(prompts=CAPTIONS[:2], samples_per_prompt=2, batch_size=3, seed=5)
    rows, shards = _predict(adapter, sd_posterior, data, tmp_path / "run")
    assert [r["prompt"] for r in rows] == [CAPTIONS[0]] * 2 + [CAPTIONS[1]] * 2
    for row in rows[1:3]:
        own = sd(row["prompt"], num_inference_steps=4, guidance_scale=guidance, output_type="pt",
                 generator=torch.Generator().manual_seed(int(row["seed"]))).images[0]  # fmt: skip
        kept = shards["sample"][(shards["index"] == int(row["index"])).nonzero().item()]
        assert (kept - own).abs().max().item() <= 1e-4


@pytest.mark.parametrize("guidance", [1.0, 5.0])
def test_a_kept_sample_is_the_stable_diffusion_xl_pipelines_own_image(pairs, tmp_path, guidance):
    """SDXL: two text encoders, pooled embeddings, added time ids, and zeros for the empty negative prompt."""
    from tests.pipelines import tiny_stable_diffusion_xl

    pipe = tiny_stable_diffusion_xl(tmp_path / "sdxl")
    adapter = DiffusersAdapter.from_pipeline(pipe, guidance_scale=guidance, steps=3)
    posterior = fit_posterior(adapter, pairs, batch_size=4)
    data = PromptDataModule(prompts=CAPTIONS[:2], samples_per_prompt=1, batch_size=2, seed=2)
    rows, shards = _predict(adapter, posterior, data, tmp_path / "run")
    for row in rows:
        own = pipe(row["prompt"], num_inference_steps=3, guidance_scale=guidance, output_type="pt",
                   generator=torch.Generator().manual_seed(int(row["seed"]))).images[0]  # fmt: skip
        kept = shards["sample"][(shards["index"] == int(row["index"])).nonzero().item()]
        assert (kept - own).abs().max().item() <= 1e-4


@pytest.mark.parametrize("guidance", [1.0, 4.5])
def test_a_kept_sample_is_the_pixart_pipelines_own_image(pairs, tmp_path, guidance):
    """PixArt-α: T5 with its attention mask, a transformer called by keyword, learned variance."""
    from tests.pipelines import tiny_pixart

    pipe = tiny_pixart()
    adapter = DiffusersAdapter.from_pipeline(pipe, guidance_scale=guidance, steps=3)
    assert adapter.last_layer == "proj_out" and adapter.prediction_channels == 4
    posterior = fit_posterior(adapter, pairs, batch_size=4)
    rows, shards = _predict(adapter, posterior, PromptDataModule(prompts=CAPTIONS[1:3], samples_per_prompt=1),
                            tmp_path / "run")  # fmt: skip
    for row in rows:  # resolution binning needs one of PixArt's own sizes; this tiny model has none
        own = pipe(row["prompt"], num_inference_steps=3, guidance_scale=guidance, output_type="pt",
                   use_resolution_binning=False,
                   generator=torch.Generator().manual_seed(int(row["seed"]))).images[0]  # fmt: skip
        kept = shards["sample"][(shards["index"] == int(row["index"])).nonzero().item()]
        assert (kept - own).abs().max().item() <= 1e-4


@pytest.mark.parametrize("guidance", [1.0, 5.0])
def test_a_kept_sample_is_the_stable_diffusion_3_pipelines_own_image(pairs, tmp_path, guidance):
    """SD3: three text encoders, pooled projections, flow matching (FlowMatchEulerDiscreteScheduler, shift 3)."""
    from genunc_lightning import seeding
    from tests.pipelines import tiny_stable_diffusion_3

    pipe = tiny_stable_diffusion_3(tmp_path / "sd3")
    adapter = DiffusersAdapter.from_pipeline(pipe, guidance_scale=guidance, steps=3)
    posterior = fit_posterior(adapter, pairs, batch_size=4)
    rows, shards = _predict(adapter, posterior, PromptDataModule(prompts=CAPTIONS[:2], samples_per_prompt=1),
                            tmp_path / "run")  # fmt: skip
    for row in rows:
        own = pipe(row["prompt"], num_inference_steps=3, guidance_scale=guidance, output_type="pt",
                   generator=torch.Generator().manual_seed(int(row["seed"]))).images[0]  # fmt: skip
        kept = shards["sample"][(shards["index"] == int(row["index"])).nonzero().item()]
        assert (kept - own).abs().max().item() <= 1e-4
    # the Fisher pass's residual: the velocity minus (ε − x0) at x_t = (1 − σ) x0 + σ ε, σ on the training grid
    images, captions = torch.stack([x for x, _ in pairs[:2]]), [c for _, c in pairs[:2]]
    seeds = torch.tensor([11, 12])
    x0 = adapter.encode(images)
    gens = seeding.generators(seeds, "cpu")
    eps = seeding.randn(gens, x0.shape[1:], "cpu")
    grid = type(pipe.scheduler).from_config(pipe.scheduler.config).sigmas  # the pipeline's calls moved its own
    sigma = grid[seeding.randint(gens, 1000, "cpu")].view(-1, 1, 1, 1)
    embeds, _, pooled, _ = pipe.encode_prompt(captions, captions, captions, do_classifier_free_guidance=False)
    velocity = pipe.transformer((1 - sigma) * x0 + sigma * eps, timestep=sigma.flatten() * 1000,
                                encoder_hidden_states=embeds, pooled_projections=pooled).sample  # fmt: skip
    torch.testing.assert_close(adapter.residual((images, captions), seeds), velocity - (eps - x0))


@pytest.mark.parametrize("guidance", [1.0, 4.0])
def test_a_kept_sample_is_the_dit_pipelines_own_image(tmp_path, guidance):
    """A guided class-conditional model (DiT, null class 1000) with no glue at all."""
    pipe = tiny_dit()
    adapter = DiffusersAdapter.from_pipeline(pipe, guidance_scale=guidance, steps=4)
    posterior = fit_posterior(adapter, [(torch.rand(3, 16, 16) * 2 - 1, c) for c in (3, 7, 3, 9)], batch_size=4)
    rows, shards = _predict(adapter, posterior, SeedDataModule(3, 2, seed=1, classes=[3, 7]), tmp_path / "run")
    for row, kept in zip(rows, shards["sample"], strict=True):
        own = pipe([int(row["class"])], num_inference_steps=4, guidance_scale=guidance, output_type="np",
                   generator=torch.Generator().manual_seed(int(row["seed"]))).images[0]  # fmt: skip
        assert (kept - torch.from_numpy(own).permute(2, 0, 1)).abs().max().item() <= 1e-4


def test_guidance_and_member_batching_compose_exactly(sd, sd_posterior):
    """Both branches of a sample use its member's weights: member_chunk = 1 and = M give the same scores."""
    adapter = DiffusersAdapter.from_pipeline(sd, guidance_scale=6.0, steps=3)
    batch = {"index": torch.arange(3), "seed": torch.tensor([4, 5, 6]), "class": torch.tensor([0, 1, 0]),
             "prompt": [CAPTIONS[0], CAPTIONS[1], CAPTIONS[0]]}  # fmt: skip
    scores = [
        GenerativeUncertaintyModule(
            adapter, sd_posterior, [PixelLikelihood()], num_members=3, member_chunk=chunk
        ).predict_step(batch, 0)["scores"]["pixel"]
        for chunk in (1, 3)
    ]
    torch.testing.assert_close(scores[0], scores[1], rtol=1e-5, atol=1e-5)
    # and the drawn members do differ from each other: the test could see a member given the wrong weights
    unguided = GenerativeUncertaintyModule(adapter, sd_posterior, [PixelLikelihood()], num_members=3, member_chunk=3,
                                           guidance_scale=1.0).predict_step(batch, 0)["scores"]["pixel"]  # fmt: skip
    assert not torch.allclose(unguided, scores[0])


def test_the_fisher_pass_uses_the_captions(sd, pairs, sd_posterior):
    adapter = DiffusersAdapter.from_pipeline(sd, steps=4)
    empty = fit_posterior(adapter, [(x, "") for x, _ in pairs], batch_size=4)
    assert not torch.allclose(sd_posterior.fisher["weight"], empty.fisher["weight"])
    # a text model given no captions, and captions for a model that takes none, are errors
    with pytest.raises(ValueError, match="conditioned on text, but the training batches give no conditioning"):
        fit_posterior(adapter, [x for x, _ in pairs], batch_size=4)
    unconditional = DiffusersAdapter(sd.unet, sd.scheduler, (4, 8, 8), encoder_hidden_states=torch.zeros(1, 16, 32))
    with pytest.raises(ValueError, match="give captions, but DiffusersAdapter takes no conditioning"):
        fit_posterior(unconditional, pairs, batch_size=4)


def test_the_table_has_the_prompt_column_and_the_manifest_the_prompt_list(sd, sd_posterior, tmp_path):
    prompts = ['a "quoted", comma', "plain"]
    file = tmp_path / "prompts.txt"
    file.write_text("\n".join(prompts) + "\n\n")
    data = PromptDataModule(prompts_file=str(file), samples_per_prompt=2, batch_size=4, seed=0)
    rows, _ = _predict(DiffusersAdapter.from_pipeline(sd, guidance_scale=3.0, steps=2), sd_posterior, data,
                       tmp_path / "run")  # fmt: skip
    text = (tmp_path / "run" / "scores.csv").read_text()
    assert text.splitlines()[0].startswith("index,seed,class,prompt,") and '"a ""quoted"", comma"' in text
    assert [(r["class"], r["prompt"]) for r in rows] == [("0", prompts[0])] * 2 + [("1", prompts[1])] * 2
    assert read_prompts(tmp_path / "run") == prompts
    identity = read_manifest(tmp_path / "run")["identity"]
    assert identity["data"]["num_prompts"] == 2 and len(identity["data"]["prompts"]) == 64
    assert identity["module"]["adapter"]["settings"]["guidance_scale"] == 3.0


def test_bad_prompt_input_is_one_clear_line(sd, sd_posterior, tmp_path, caplog):
    from genunc_lightning.adapters import GaussianDiffusionAdapter
    from genunc_lightning.models import MLPDenoiser

    with pytest.raises(ValueError, match="prompt list is empty"):
        PromptDataModule(prompts=[])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        PromptDataModule(prompts_file=str(tmp_path / "missing.txt"))
    with pytest.raises(ValueError, match="unconditional: leave guidance_scale at 1"):
        GaussianDiffusionAdapter(MLPDenoiser(hidden=8), "out", (2,), guidance_scale=3.0)
    with pytest.raises(ValueError, match="set null_class"):
        GaussianDiffusionAdapter(MLPDenoiser(hidden=8, num_classes=3), "out", (2,), num_classes=3, guidance_scale=3.0)
    adapter = DiffusersAdapter(sd.unet, sd.scheduler, (4, 8, 8), encoder_hidden_states=torch.zeros(1, 16, 32))
    with pytest.raises(ValueError, match="takes no prompts"):
        adapter.sample(torch.arange(2), Condition(torch.zeros(2, dtype=torch.long), prompts=("a", "b")), steps=1)
    text = DiffusersAdapter.from_pipeline(sd, steps=2)
    with pytest.raises(ValueError, match="conditioned on text: give prompts"):
        text.sample(torch.arange(2), steps=1)
    with pytest.raises(TypeError, match="not a diffusers pipeline"):
        DiffusersAdapter.from_pipeline(sd.unet)
    with pytest.raises(ValueError, match="has no class embedding .* its labels would be ignored"):
        DiffusersAdapter(sd.unet, sd.scheduler, (4, 8, 8), num_classes=8, encoder_hidden_states=torch.zeros(1, 16, 32))
    # through the predict module: prompts for a model without text, a text model without prompts
    batch = {"index": torch.arange(2), "seed": torch.arange(2), "class": torch.zeros(2, dtype=torch.long)}
    module = GenerativeUncertaintyModule(adapter, sd_posterior, [PixelLikelihood()], num_members=1)
    with pytest.raises(ValueError, match="DiffusersAdapter takes no prompts"):
        module.predict_step({**batch, "prompt": ["a", "b"]}, 0)
    module = GenerativeUncertaintyModule(text, sd_posterior, [PixelLikelihood()], num_members=1)
    with pytest.raises(
        ValueError, match="is conditioned on text: give prompts .genunc_lightning.data.PromptDataModule"
    ):
        module.predict_step(batch, 0)
    # a prompt longer than the tokenizer's limit: the pipeline's own warning (16 tokens here)
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.enable_propagation()
    try:
        with caplog.at_level("WARNING"):
            text.encode_prompts(["a very long prompt that goes on and on"])
    finally:
        diffusers_logging.disable_propagation()
    assert "truncated because CLIP can only handle sequences up to 16 tokens" in caplog.text
    with pytest.raises(ValueError, match="scale <= 1 as no guidance"):
        DiffusersAdapter.from_pipeline(sd, guidance_scale=0.5)


def test_evaluate_ranks_each_prompts_samples_without_a_reference_set(sd, sd_posterior, tmp_path):
    import numpy as np

    from genunc_lightning.evaluation import Evaluation

    prompts = ["a red cat", "a blue door", "two dogs"]
    data = PromptDataModule(prompts=prompts, samples_per_prompt=5, batch_size=8, seed=3)
    rows, _ = _predict(DiffusersAdapter.from_pipeline(sd, guidance_scale=2.0, steps=2), sd_posterior, data,
                       tmp_path / "run")  # fmt: skip
    report = Evaluation(str(tmp_path / "run"), reject_fraction=0.2).run()
    out = tmp_path / "run" / "evaluation"
    assert report["groups"] == 3 and report["scores"]["pixel"]["rejected"] == 3  # ceil(0.2 · 5) of each prompt
    pixel = np.array([float(r["pixel"]) for r in rows])
    with (out / "best_of_n.csv").open(newline="") as f:
        best = list(csv.DictReader(f))
    for p, prompt in enumerate(prompts):  # the least uncertain of each prompt's five, by numpy
        assert best[p]["prompt"] == prompt and int(best[p]["pixel_index"]) == 5 * p + int(
            np.argmin(pixel[5 * p : 5 * p + 5])
        )
    with (out / "rejected.csv").open(newline="") as f:
        worst = {int(r["index"]) for r in csv.DictReader(f)}
    assert worst == {5 * p + int(np.argmax(pixel[5 * p : 5 * p + 5])) for p in range(3)}
    assert all((out / "galleries" / "pixel" / f"prompt_{p}.png").is_file() for p in range(3))
    assert json.loads((out / "evaluation.json").read_text())["scores"]["pixel"]["best_of_n"]["two dogs"] >= 10
    # a threshold instead of a fraction
    report = Evaluation(str(tmp_path / "run"), reject_threshold={"pixel": float(np.median(pixel))}).run()
    assert report["scores"]["pixel"]["rejected"] == int((pixel > np.median(pixel)).sum())


def test_the_readme_text_to_image_block_runs_as_written(sd, pairs, tmp_path):
    """The README's "Text-to-image and guided models" block, with a tiny pipeline and captions as stand-ins."""
    import re

    from tests.test_readme import readme_block

    code = readme_block("### Text-to-image and guided models")
    stand_ins = {
        "PIPE": "PIPE = SD",
        "CAPTIONED": "CAPTIONED = PAIRS",
        "STEPS, GUIDANCE": "STEPS, GUIDANCE = 3, 7.5",
        "OUT": f"OUT = {str(tmp_path / 'sd')!r}",
    }
    for name, line in stand_ins.items():
        code, count = re.subn(rf"^{re.escape(name)} = .*$", line, code, flags=re.M)
        assert count == 1, f"the README block no longer sets {name}"
    namespace = {"SD": sd, "PAIRS": pairs}
    exec(compile(code, "README.md", "exec"), namespace)
    assert namespace["report"]["groups"] == 2 and namespace["report"]["scores"]["pixel"]["rejected"] == 4
    row, image = namespace["row"], namespace["image"]
    shards = read_shards(tmp_path / "sd" / "run")
    kept = shards["sample"][(shards["index"] == int(row["index"])).nonzero().item()]
    assert (kept - image).abs().max().item() <= 1e-4  # the flagged sample, regenerated by the pipeline


def test_the_cli_reads_a_pipeline_folder_prompts_from_a_file_and_guidance(sd, sd_posterior, tmp_path, capsys):
    """`genunc predict` with the pipeline folder in YAML, prompts from a file, guidance on the command line."""
    from genunc_lightning.cli import main

    sd.save_pretrained(tmp_path / "sd")
    sd_posterior.save(tmp_path / "posterior.safetensors")
    (tmp_path / "prompts.txt").write_text("a red cat\na blue door\n")
    (tmp_path / "model.yaml").write_text(
        "model:\n  adapter:\n    class_path: genunc_lightning.adapters.DiffusersPipelineAdapter\n"
        f"    init_args: {{pretrained: {tmp_path / 'sd'}, steps: 3}}\n"
        f"  posterior: {tmp_path / 'posterior.safetensors'}\n  num_members: 2\n"
        "data:\n  class_path: genunc_lightning.data.PromptDataModule\n"
        f"  init_args: {{prompts_file: {tmp_path / 'prompts.txt'}, samples_per_prompt: 2}}\n"
    )
    main(["predict", "--config", str(tmp_path / "model.yaml"), "--model.guidance_scale", "4",
          "--writer.output_dir", str(tmp_path / "run"), "--trainer.accelerator", "cpu"])  # fmt: skip
    identity = read_manifest(tmp_path / "run")["identity"]
    assert identity["module"]["adapter"]["settings"]["guidance_scale"] == 4.0
    with (tmp_path / "run" / "scores.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["prompt"] for r in rows] == ["a red cat"] * 2 + ["a blue door"] * 2
    # the same row, regenerated by the user's pipeline with that guidance
    shards = read_shards(tmp_path / "run")
    kept = shards["sample"][(shards["index"] == int(rows[0]["index"])).nonzero().item()]
    own = sd(rows[0]["prompt"], num_inference_steps=3, guidance_scale=4.0, output_type="pt",
             generator=torch.Generator().manual_seed(int(rows[0]["seed"]))).images[0]  # fmt: skip
    assert (kept - own).abs().max().item() <= 1e-4
    main(["evaluate", "--run_dir", str(tmp_path / "run")])
    assert "| pixel | the worst 20% of each prompt | 2 |" in capsys.readouterr().out
    with pytest.raises(FileNotFoundError, match="no model_index.json"):
        from genunc_lightning.adapters import DiffusersPipelineAdapter

        DiffusersPipelineAdapter(str(tmp_path / "nowhere"))


def test_with_a_reference_each_prompts_best_k_is_compared_with_random_choices_per_prompt(sd, sd_posterior, tmp_path):
    from genunc_lightning.evaluation import Evaluation
    from genunc_lightning.evaluation.selection import class_balanced_random_kept_sets

    data = PromptDataModule(prompts=["a red cat", "a blue door"], samples_per_prompt=6, batch_size=12, seed=1)
    rows, _ = _predict(DiffusersAdapter.from_pipeline(sd, guidance_scale=3.0, steps=2), sd_posterior, data,
                       tmp_path / "run")  # fmt: skip
    reference = [(torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(i)),) for i in range(40)]
    report = Evaluation(str(tmp_path / "run"), reference, feature_extractor=torch.nn.Sequential(
        torch.nn.AdaptiveAvgPool2d(2), torch.nn.Flatten()), keep=8, class_balanced=True, random_subsets=6,
        combinations=[]).run()  # fmt: skip
    assert {"pixel (class-balanced)", "random (per prompt)", "random"} <= set(report["results"])
    assert report["results"]["random (per prompt)"]["subsets"] == 6
    # the per-prompt null keeps each prompt's share, 4 of its 6, at random
    classes = torch.tensor([int(r["class"]) for r in rows])
    for kept in class_balanced_random_kept_sets(classes, 8, 20, torch.Generator().manual_seed(0)):
        assert sorted(classes[kept].tolist()) == [0] * 4 + [1] * 4 and len(set(kept.tolist())) == 8


class TinyUViT(torch.nn.Module):
    """U-ViT-style: tokens, a class token from an embedding of num_classes + 1 (the last one: no class)."""

    def __init__(self, num_classes=4, dim=16):
        super().__init__()
        self.patch = torch.nn.Linear(4, dim)
        self.label_emb = torch.nn.Embedding(num_classes + 1, dim)
        self.time = torch.nn.Linear(1, dim)
        self.decoder_pred = torch.nn.Linear(dim, 4)

    def forward(self, x, timesteps, y):
        tokens = x.flatten(2).transpose(1, 2)  # [B, 16, 4]
        h = self.patch(tokens) + self.label_emb(y)[:, None] + self.time(timesteps[:, None].float() / 1000)[:, None]
        return self.decoder_pred(torch.tanh(h)).transpose(1, 2).reshape(x.shape)


def test_a_guided_class_conditional_network_needs_no_glue():
    """GaussianDiffusionAdapter(guidance_scale=w, null_class=K) on a U-ViT-style network equals the CFG loop by hand."""
    from genunc_lightning.adapters import GaussianDiffusionAdapter
    from genunc_lightning.adapters.gaussian import alphas_cumprod, sampling_timesteps

    torch.manual_seed(0)
    net = TinyUViT().eval()
    adapter = GaussianDiffusionAdapter(net, "decoder_pred", (4, 4, 4), num_classes=4, steps=5, guidance_scale=3.0,
                                       null_class=4)  # fmt: skip
    seeds, classes = torch.tensor([1, 2, 3]), torch.tensor([0, 2, 3])
    ours = adapter.sample(seeds, classes)
    x = torch.stack([torch.randn(4, 4, 4, generator=torch.Generator().manual_seed(int(s))) for s in seeds]).double()
    a = alphas_cumprod("linear", 1000)
    steps = sampling_timesteps(1000, 5).tolist()
    with torch.no_grad():
        for i, t in enumerate(steps):
            tt = torch.full((3,), float(t))
            e_c, e_u = net(x.float(), tt, classes).double(), net(x.float(), tt, torch.full((3,), 4)).double()
            e = e_u + 3.0 * (e_c - e_u)
            x0 = (x - (1 - a[t]).sqrt() * e) / a[t].sqrt()
            x = x0 if i == len(steps) - 1 else a[steps[i + 1]].sqrt() * x0 + (1 - a[steps[i + 1]]).sqrt() * e
    torch.testing.assert_close(ours.double(), x, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kind", ["DDIMPipeline", "DDPMPipeline"])
def test_a_kept_sample_is_the_unconditional_pipelines_own_image(tiny_unet, tmp_path, kind):
    """DDIMPipeline (η = 0) and DDPMPipeline (its noise from each sample's generator) through from_pipeline."""
    import diffusers

    torch.manual_seed(0)
    scheduler = diffusers.DDPMScheduler(num_train_timesteps=100)
    pipe = getattr(diffusers, kind)(unet=tiny_unet(num_classes=None).eval(), scheduler=scheduler)
    adapter = DiffusersAdapter.from_pipeline(pipe, steps=4)
    posterior = fit_posterior(adapter, torch.rand(8, 1, 8, 8) * 2 - 1, batch_size=4)
    rows, shards = _predict(adapter, posterior, SeedDataModule(2, 2, seed=4), tmp_path / "run")
    for row, kept in zip(rows, shards["sample"], strict=True):
        own = pipe(num_inference_steps=4, output_type="np",
                   generator=torch.Generator().manual_seed(int(row["seed"]))).images[0]  # fmt: skip
        assert (kept - torch.from_numpy(own).permute(2, 0, 1)).abs().max().item() <= 1e-4


def test_reject_and_best_of_n_within_uneven_groups_against_numpy():
    import numpy as np

    from genunc_lightning.evaluation.prompt_sets import best_of_n, ranks_within_groups, rejected_fraction

    values = torch.tensor([0.3, 0.9, 0.1, 0.5, 0.2, 0.8, 0.4, 0.7])
    groups = torch.tensor([2, 2, 2, 7, 7, 7, 7, 7])  # 3 and 5 samples: ceil(1.5) = 2 and ceil(2.5) = 3 rejected
    ranks = ranks_within_groups(values, groups)
    flags = rejected_fraction(ranks, groups, 0.5)
    expected = set()
    for g, k in ((2, 2), (7, 3)):
        members = np.flatnonzero(groups.numpy() == g)
        expected |= set(members[np.argsort(values.numpy()[members])[-k:]].tolist())
    assert set(flags.nonzero().flatten().tolist()) == expected
    assert best_of_n(ranks, groups) == {2: 2, 7: 4}
    higher = ranks_within_groups(values, groups, higher_is_better=True)
    assert best_of_n(higher, groups) == {2: 1, 7: 5}
