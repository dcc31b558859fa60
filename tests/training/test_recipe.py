"""The default recipe: image size from the data, explicit settings win, epochs from the budget,
class weights for imbalanced data, early stopping, baselines and calibration in the record."""

import json
import time

import numpy as np
import pytest
from PIL import Image

from mmdemo.datasets.csv_table import read_csv
from mmdemo.training.finetune import FinetuneRequest, finetune, plan
from mmdemo.training.loop import train
from mmdemo.training.recipe import (
    REFERENCE,
    DataProfile,
    Speed,
    choose,
    estimate_seconds,
    looks_photographic,
    profile,
    regions_for,
)
from mmdemo.training.settings import TrainSettings

from ..conftest import tiny_config
from .test_train import sixteen_rows  # noqa: F401  (fixture)


def _profile(side=8, rows=4000, images=1300, imbalance=1.2):
    return DataProfile(rows, images, 3, {"a": 100, "b": 120}, side, imbalance)


def test_small_scans_get_64_px_and_photos_keep_224():
    assert choose(_profile(side=8)).config["image_size"] == 64
    assert choose(_profile(side=80)).config["image_size"] == 128
    assert choose(_profile(side=480)).config["image_size"] == 224


def test_profile_reads_the_image_size(sixteen_rows):  # noqa: F811
    data = profile(read_csv(sixteen_rows))
    assert (data.image_side, data.rows, data.images, data.texts) == (32, 16, 8, 2)


def test_explicit_settings_override_the_recipe_and_are_recorded_as_such():
    recipe = choose(_profile(), overrides={"image_size": 96, "epochs": 2, "lr": 0.01, "weight_decay": 0.2})
    assert recipe.config["image_size"] == 96 and recipe.settings.epochs == 2
    assert recipe.settings.lr == 0.01 and recipe.settings.weight_decay == 0.2
    assert recipe.choices["epochs"]["why"] == "set explicitly"
    assert recipe.choices["freeze"]["value"] == ["image_encoder", "text_encoder"]


def test_epochs_follow_the_budget_and_the_estimate_fits_it():
    small = choose(_profile(), budget_s=60, speed=REFERENCE)
    large = choose(_profile(), budget_s=600, speed=REFERENCE)
    assert 3 <= small.settings.epochs < large.settings.epochs <= 40
    assert large.estimate_s <= 600
    assert estimate_seconds(_profile(), 224, 196, 10, []) > estimate_seconds(_profile(), 64, 16, 10, ["image_encoder"])


def test_the_estimate_scales_with_the_machine_speed():
    frozen = ["image_encoder", "text_encoder"]
    base = estimate_seconds(_profile(), 128, 64, 10, frozen, REFERENCE)
    assert estimate_seconds(_profile(), 128, 64, 10, frozen, Speed(2.0, 2.0)) == pytest.approx(2 * base)
    # each factor scales its own work: together, the two parts make up the whole estimate
    slower_encoder = estimate_seconds(_profile(), 128, 64, 10, frozen, Speed(3.0, 1.0)) - base
    slower_fusion = estimate_seconds(_profile(), 128, 64, 10, frozen, Speed(1.0, 3.0)) - base
    assert 0 < slower_encoder < slower_fusion and slower_encoder + slower_fusion == pytest.approx(2 * base)
    # the recipe's estimate and epochs follow: the same run takes twice as long on a machine half
    # as fast, and a budget buys fewer epochs there
    fixed = {"epochs": 5, "stage2_blocks": 0}
    assert choose(_profile(), 10_000, fixed, speed=Speed(2.0, 2.0)).estimate_s == pytest.approx(
        2 * choose(_profile(), 10_000, fixed, speed=REFERENCE).estimate_s
    )
    slow = choose(_profile(), 600, speed=Speed(4.0, 4.0))
    assert slow.settings.epochs < choose(_profile(), 600, speed=REFERENCE).settings.epochs
    assert slow.estimate_s <= 600


def test_the_speed_probe_is_quick_positive_and_leaves_torch_as_it_was():
    import math

    import torch

    from mmdemo.training.recipe import machine_speed, probe_ms

    threads, rng = torch.get_num_threads(), torch.get_rng_state()
    start = time.perf_counter()
    probe = probe_ms(1)
    assert time.perf_counter() - start < 3.0
    assert all(0 < ms < 3000 and math.isfinite(ms) for ms in probe)
    assert torch.get_num_threads() == threads and torch.equal(torch.get_rng_state(), rng)
    speed = machine_speed(1)
    assert all(0 < factor and math.isfinite(factor) for factor in speed)
    start = time.perf_counter()
    assert machine_speed(1) is speed and time.perf_counter() - start < 0.01  # measured once per process


def test_explicit_settings_are_estimated_on_the_model_s_grid_of_regions(sixteen_rows, tmp_path):  # noqa: F811
    from mmdemo.training.recipe import machine_speed

    settings = TrainSettings(epochs=4, freeze=[], cpu_threads=1)
    config = tiny_config(image_size=224)  # 14 x 14 stride-16 regions
    recipe = plan(FinetuneRequest(read_csv(sixteen_rows), tmp_path / "m", settings=settings, config=config))
    data = profile(read_csv(sixteen_rows))
    assert recipe.estimate_s == pytest.approx(estimate_seconds(data, 224, 196, 4, [], machine_speed(1)))


def test_class_weights_only_for_imbalanced_data(tmp_path):
    assert not choose(_profile()).settings.class_weights
    assert choose(_profile(imbalance=50)).settings.class_weights
    # answers of different questions do not compete: 10 digits vs even/odd is no imbalance
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    rows = [f"a.png,what digit?,{i % 10}" for i in range(100)] + [
        f"a.png,even or odd?,{'eo'[i % 2]}" for i in range(100)
    ]
    (tmp_path / "d.csv").write_text("image,text,label\n" + "\n".join(rows) + "\n")
    assert profile(read_csv(tmp_path / "d.csv")).imbalance == 1.0
    rows += [f"a.png,is it odd?,{'yes' if i < 95 else 'no'}" for i in range(100)]
    (tmp_path / "d.csv").write_text("image,text,label\n" + "\n".join(rows) + "\n")
    assert profile(read_csv(tmp_path / "d.csv")).imbalance == 19.0


def test_threads_leave_busy_cores_alone():
    from mmdemo.training.recipe import cpu_threads

    assert cpu_threads(2, 0.1)[0] == 2 and cpu_threads(2, 16.0)[0] == 1 and cpu_threads(16, 3.0)[0] == 13
    # the cores busy now count, not the load average a command that just ended left behind
    assert cpu_threads(2, 1.3, busy=0.1)[0] == 2 and cpu_threads(2, 0.2, busy=1.9)[0] == 1
    assert "busy now" in cpu_threads(2, 1.3, busy=0.1)[1]


def test_early_stopping_ends_training_on_a_plateau(sixteen_rows):  # noqa: F811
    ds = read_csv(sixteen_rows)
    settings = TrainSettings(epochs=30, batch_size=8, lr=0.0, modality_dropout=0.0, patience=2)
    result = train(ds, ds, settings, config=tiny_config())
    # lr 0: no epoch beats the first, so it stops after 1 + patience epochs and keeps epoch 1
    assert len(result.history) == 3 and result.best_epoch == 1 and result.stopped_early


def test_default_recipe_trains_calibrates_and_reports_baselines(sixteen_rows, tmp_path):  # noqa: F811
    ds = read_csv(sixteen_rows)
    overrides = {"epochs": 3, "batch_size": 8}
    # image_size left at the default (224), so the recipe chooses it
    config = tiny_config(image_size=224)
    request = FinetuneRequest(ds, tmp_path / "m", config=config, overrides=overrides, val_dataset=ds)
    recipe = plan(request)
    assert recipe.config["image_size"] == 64  # the tiny 32-px images: the recipe's choice
    assert recipe.settings.epochs == 3 and recipe.estimate_s > 0
    result = finetune(request)
    saved = json.loads((tmp_path / "m" / "config.json").read_text())
    record = saved["training"]
    assert saved["model"]["image_size"] == 64
    assert record["recipe"]["epochs"]["why"] == "set explicitly"
    assert "image_size" in record["recipe"] and record["estimated_seconds"] > 0
    assert set(record["baselines"]) == {"majority", "image_only", "text_only"}
    assert saved["model"]["temperature"] == record["calibration"]["temperature"] > 0
    assert {"ece_before", "ece_after", "reliability_after"} <= set(record["calibration"])
    assert record["throughput"]["first_epoch_samples_per_s"] > 0
    # a small CNN has no pretrained blocks to tune: one stage, and the record and card say so
    assert [s["stage"] for s in record["stages"]] == [1] and record["stages"][0]["samples_per_s"] > 0
    assert "stage 1: epochs 1-3" in (tmp_path / "m" / "README.md").read_text()
    assert result.record == record
    # a run that ended on its own leaves no resume state behind
    assert not (tmp_path / ".m.resume").exists()


def test_tiny_images_in_the_fixture_are_real_files(sixteen_rows):  # noqa: F811
    image = Image.open(sixteen_rows.parent / "img" / "0.png")
    assert image.size == (32, 32) and np.asarray(image).std() > 0


def test_recipe_plans_stage2_for_a_frozen_pretrained_lite0_only():
    recipe = choose(_profile())
    settings = recipe.settings
    assert settings.stage2_blocks == 3 and "image_encoder" in settings.freeze
    assert settings.stage2_lr < settings.lr and 0 < settings.layer_decay < 1 and settings.weight_decay > 0
    assert settings.augment_views > 1 and 0 < settings.augment_shift <= 0.1 and settings.stage2_cost > 1
    assert recipe.estimate_s <= 600 and "stage2_blocks" in recipe.choices
    # explicit choices win: --freeze means one stage, as set; --stage2-blocks 0 too
    assert choose(_profile(), overrides={"freeze": ["image_encoder", "text_encoder"]}).settings.stage2_blocks == 0
    assert choose(_profile(), overrides={"stage2_blocks": 0}).settings.stage2_blocks == 0
    # --epochs N means N epochs in all (one stage), unless stage 2 is asked for as well
    assert choose(_profile(), overrides={"epochs": 1}).settings.stage2_blocks == 0
    assert choose(_profile(), overrides={"epochs": 1, "stage2_blocks": 2}).settings.stage2_blocks == 2
    assert choose(_profile(), overrides={"image_encoder": "small_cnn"}).settings.stage2_blocks == 0
    assert choose(_profile(), overrides={"stage2_blocks": 2, "stage2_lr": 1e-5}).settings.stage2_lr == 1e-5


def test_augmentation_keeps_the_meaning_of_the_questions():
    digits = DataProfile(4000, 1300, 3, {"a": 1, "b": 1}, 8, 1.0, frozenset({"what", "digit", "is", "this"}))
    patches = DataProfile(4000, 1300, 4, {"a": 1, "b": 1}, 32, 1.0, frozenset({"which", "half", "is", "brighter"}))
    assert choose(digits).settings.augment_colour > 0
    assert choose(patches).settings.augment_colour == 0  # brightness jitter would change the answer
    assert "brighter" in choose(patches).choices["augment_colour"]["why"]


def _words(text: str) -> frozenset:
    return frozenset(text.lower().replace("?", " ").replace(",", " ").split())


def test_photos_train_on_augmented_copies_that_keep_the_answers():
    crops = DataProfile(3600, 1200, 3, {"a": 1, "b": 1}, 96, 1.0, _words(
        "What is shown in this picture? Is the picture upside down? Is this picture in colour or black and white?"
    ))  # fmt: skip
    settings = choose(crops).settings
    assert settings.stage1_augment and settings.augment_views > 1
    assert settings.augment_zoom < 1 and settings.augment_mirror and settings.augment_blur > 0
    assert settings.augment_colour == 0  # a question is about colour
    # each change stays off where a question is about what it changes
    lr = DataProfile(3600, 1200, 3, {"a": 1, "b": 1}, 96, 1.0, _words("Is the dog on the left or the right?"))
    sharp = DataProfile(3600, 1200, 3, {"a": 1, "b": 1}, 96, 1.0, _words("Is the photo sharp or blurry?"))
    count = DataProfile(3600, 1200, 3, {"a": 1, "b": 1}, 96, 1.0, _words("How many cars are there?"))
    assert not choose(lr).settings.augment_mirror and "left" in choose(lr).choices["augment_mirror"]["why"]
    assert choose(sharp).settings.augment_blur == 0 and "sharp" in choose(sharp).choices["augment_blur"]["why"]
    assert choose(count).settings.augment_zoom == 1 and "many" in choose(count).choices["augment_zoom"]["why"]
    assert choose(lr).settings.augment_colour > 0
    # small scans (digits) train stage 1 on the images as they are, and are never mirrored
    digits = choose(_profile(side=8)).settings
    assert not digits.stage1_augment and not digits.augment_mirror and digits.augment_zoom == 1
    # copies are encoded by the frozen pretrained EfficientNet-Lite0; a small CNN trains on the images as they are
    small = choose(crops, overrides={"image_encoder": "small_cnn"})
    assert not small.settings.stage1_augment and "lacks" in small.choices["stage1_augment"]["why"]
    # explicit choices win
    assert not choose(crops, overrides={"stage1_augment": False}).settings.stage1_augment
    assert choose(crops, overrides={"augment_views": 2}).settings.augment_views == 2
    # the copies' encoding is in the estimate, within the budget
    with_copies = choose(crops, 36000, speed=REFERENCE).estimate_s
    assert with_copies > choose(crops, 36000, {"stage1_augment": False}, speed=REFERENCE).estimate_s


def test_zoomed_mirrored_and_blurred_copies():
    import torch

    from mmdemo.training.augment import IDENTITY, PARAMS, augment, augment_views

    pixels = torch.zeros(1, 3, 16, 16, dtype=torch.uint8)
    pixels[..., :, :4] = 200  # a bright band along the left edge
    one = dict(zip(PARAMS, IDENTITY.tolist()))
    mirrored = augment(pixels, torch.tensor([list((one | {"mirror": 1.0}).values())]))
    assert mirrored[..., 12:].mean() > 150 and mirrored[..., :4].mean() < 50  # the band is on the right
    zoomed = augment(pixels, torch.tensor([list((one | {"zoom": 0.5, "dx": 0.25}).values())]))
    assert zoomed[..., :7].mean() > 150  # the left half blown up (its band to the left half)
    blurred = augment(pixels, torch.tensor([list((one | {"blur": 1.5}).values())]))
    edge = lambda x: (x[..., 1:] - x[..., :-1]).abs().max()  # noqa: E731
    assert edge(blurred) < 0.6 * edge(pixels.float()) and abs(blurred.mean() - pixels.float().mean()) < 2
    settings = TrainSettings(augment_views=64, augment_zoom=0.6, augment_mirror=True, augment_blur=1.0)
    views = augment_views(3, settings, torch.Generator().manual_seed(0))
    zoom, mirror, blur = views[1:, :, 4], views[1:, :, 5], views[1:, :, 6]
    assert torch.equal(views[0], IDENTITY.expand(3, -1))
    assert zoom.min() >= 0.6 and zoom.max() <= 1 and 0.3 < mirror.mean() < 0.7 and blur.max() <= 1.0
    # a zoomed part stays inside the image: its centre moves at most (1 - zoom) / 2 (+ the shift, 0 here)
    assert (views[1:, :, :2].abs() <= ((1 - zoom) / 2)[..., None] + 1e-6).all()
    assert (
        not TrainSettings().augment_mirror
        and augment_views(3, TrainSettings(augment_views=4), torch.Generator())[..., 5].sum() == 0
    )


def test_augmented_copies_shift_and_jitter_but_never_flip():
    import torch

    from mmdemo.training.augment import IDENTITY, augment, augment_views
    from mmdemo.training.settings import TrainSettings

    pixels = torch.zeros(1, 3, 16, 16, dtype=torch.uint8)
    pixels[..., :, :8] = 200  # bright left half
    settings = TrainSettings(augment_views=6, augment_shift=0.1, augment_colour=0.2)
    views = augment_views(1, settings, torch.Generator().manual_seed(0))
    assert torch.equal(views[0, 0], IDENTITY) and torch.equal(augment(pixels, views[0]), pixels.float())
    for params in views[1:]:
        out = augment(pixels, params)
        assert out[..., :6].mean() > out[..., 10:].mean()  # still brighter on the left
        assert (params[:, :2].abs() <= 0.1).all() and (params[:, 2] - 1).abs().max() <= 0.2


def test_busy_cores_sees_a_process_that_keeps_a_core_busy():
    import subprocess
    import sys

    from mmdemo.training.recipe import busy_cores

    if busy_cores(0.05) is None:
        pytest.skip("no /proc/stat here")
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        assert busy_cores(0.5) >= 0.6
    finally:
        spinner.kill()


def test_photos_whose_questions_leave_only_blur_train_stage1_on_the_images_as_they_are():
    placed = DataProfile(9000, 1500, 5, {"a": 1, "b": 1}, 75, 1.0, _words(
        "Tell me about the red object. side left right height top bottom"
    ))  # fmt: skip
    recipe = choose(placed)
    assert recipe.settings.augment_zoom == 1 and not recipe.settings.augment_mirror
    assert recipe.settings.augment_shift == 0 and recipe.settings.augment_colour == 0
    assert not recipe.settings.stage1_augment and "blur only" in recipe.choices["stage1_augment"]["why"]
    assert choose(placed, overrides={"stage1_augment": True}).settings.stage1_augment  # an explicit choice wins


def _photo_profile(photographic: float, side: int = 96) -> DataProfile:
    return DataProfile(3600, 1200, 3, {"a": 1, "b": 1}, side, 1.0, _words("What is shown?"), photographic)


def test_photographs_are_read_through_the_encoders_features_alone():
    photos = choose(_photo_profile(0.9))
    assert photos.config["patch_embedding"] is False and photos.config["image_size"] == 128
    assert "look like photographs" in photos.choices["patch_embedding"]["why"]
    # drawings of the same size, and small scans, keep the embedding of each region's pixels
    assert choose(_photo_profile(0.1)).config["patch_embedding"] is True
    assert choose(_photo_profile(0.9, side=32)).config["patch_embedding"] is True
    # an explicit choice wins
    assert choose(_photo_profile(0.9), overrides={"patch_embedding": True}).config["patch_embedding"] is True


def test_pooled_regions_are_estimated_as_the_fusion_reads_them():
    assert (regions_for(224, 16), regions_for(224, 16, 2), regions_for(200, 16, 2)) == (196, 49, 49)
    pooled = choose(_photo_profile(0.9), speed=REFERENCE, overrides={"image_size": 224, "region_pool": 2})
    assert (pooled.config["image_size"], pooled.config["region_pool"]) == (224, 2)
    # a cheaper epoch: more of them fit the same budget
    assert (
        pooled.settings.epochs
        > choose(_photo_profile(0.9), speed=REFERENCE, overrides={"image_size": 224}).settings.epochs
    )


def test_photographs_are_told_from_drawings_and_scans(tmp_path):
    from sklearn.datasets import load_sample_image

    from mmdemo.datasets import sortofclevr

    china = Image.fromarray(load_sample_image("china.jpg"))
    assert looks_photographic(china) and looks_photographic(china.crop((100, 100, 196, 196)))
    assert looks_photographic(china.convert("L"))  # black and white is still a photograph
    scene = sortofclevr.render(sortofclevr.random_scene(np.random.default_rng(0)))
    assert not looks_photographic(scene)
    chart = Image.new("RGB", (200, 120), "white")
    chart.paste((200, 30, 30), (20, 40, 60, 120))
    assert not looks_photographic(chart)
    # the profile reads the share from the images themselves
    china.crop((100, 100, 196, 196)).save(tmp_path / "photo.png")
    scene.save(tmp_path / "scene.png")
    (tmp_path / "data.csv").write_text("image,text,label\nphoto.png,what?,a\nscene.png,what?,b\n")
    assert profile(read_csv(tmp_path / "data.csv")).photographic == 0.5
