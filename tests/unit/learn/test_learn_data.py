import pytest
import torch
from PIL import Image

from cns_ray.data import example_concepts
from cns_ray.errors import InputError
from cns_ray.learn.data import load_concept, mirror_caption, mirrored_ids, with_placeholder


def _img(path, size=(40, 30), color=(200, 10, 10)):
    Image.new("RGB", size, color).save(path)


def test_load_sorted_resized_cropped_with_template_captions(tmp_path):
    _img(tmp_path / "b.jpg", (40, 30), (0, 0, 255))
    _img(tmp_path / "a.png", (30, 60), (255, 0, 0))
    (tmp_path / "notes.md").write_text("ignored")
    d = load_concept(tmp_path, "dog", "<rex>", resolution=16, augment=False)
    assert d.files == ["a.png", "b.jpg"]
    assert d.images.shape == (2, 3, 16, 16)
    assert float(d.images.min()) >= -1 and float(d.images.max()) <= 1
    assert d.images[0, 0].mean() > 0.9 and d.images[1, 2].mean() > 0.9  # red first, then blue
    assert d.captions == ["a photo of a dog"] * 2
    assert d.train_captions == ["a photo of a <rex> dog"] * 2


def test_captions_file_and_sidecars(tmp_path):
    for n in ("x", "y"):
        _img(tmp_path / f"{n}.png")
    (tmp_path / "x.txt").write_text("my dog on grass")
    (tmp_path / "y.txt").write_text("portrait of a puppy")
    d = load_concept(tmp_path, "dog", "<rex>", 8, augment=False)
    assert d.train_captions == ["my <rex> dog on grass", "<rex> dog, portrait of a puppy"]
    (tmp_path / "captions.txt").write_text("a Dog in snow\n\na dog at night\n")
    assert load_concept(tmp_path, "dog", "<rex>", 8).train_captions == ["a <rex> Dog in snow", "a <rex> dog at night"]


def test_placeholder_matches_whole_words_only():
    assert with_placeholder("a hotdog stand", "<t>", "dog") == "<t> dog, a hotdog stand"
    assert with_placeholder("my teddy bear, close up", "<t>", "teddy bear") == "my <t> teddy bear, close up"


def test_augmentation_is_seeded(tmp_path):
    for i in range(3):
        Image.effect_noise((50, 50), 60).convert("RGB").save(tmp_path / f"{i}.png")
    d = load_concept(tmp_path, "cat", "<c>", 32, augment=True)
    assert d.images.shape[-1] == 36  # room for a small random crop
    idx = torch.tensor([0, 1, 2, 0, 1, 2])
    a = d.batch(idx, torch.Generator().manual_seed(5), augment=True)
    b = d.batch(idx, torch.Generator().manual_seed(5), augment=True)
    c = d.batch(idx, torch.Generator().manual_seed(6), augment=True)
    assert a.shape == (6, 3, 32, 32) and torch.equal(a, b) and not torch.equal(a, c)


def test_a_flipped_image_trains_on_its_mirrored_caption(tmp_path):
    """hflip augmentation mirrors left and right: the flags say which images were flipped, and those images' captions
    have left and right swapped (a red-left / blue-right image flipped is blue-left, and its caption says so)."""
    im = Image.new("RGB", (40, 40), (255, 0, 0))
    im.paste((0, 0, 255), (20, 0, 40, 40))  # red left half, blue right half
    for i in range(2):
        im.save(tmp_path / f"{i}.png")
    (tmp_path / "captions.txt").write_text("a red cat at the left\nLeft: red, right: blue, a cat\n")
    d = load_concept(tmp_path, "cat", "<c>", 32, augment=True)
    idx = torch.tensor([0, 1] * 8)
    pixels, flips = d.batch_and_flips(idx, torch.Generator().manual_seed(0), augment=True)
    assert flips.dtype == torch.bool and flips.shape == (16,) and 0 < int(flips.sum()) < 16
    left_is_blue = pixels[:, 2, :, :4].mean(dim=(1, 2)) > 0.5  # [B]
    assert torch.equal(left_is_blue, flips)
    assert torch.equal(pixels, d.batch(idx, torch.Generator().manual_seed(0), augment=True))  # same draws as before
    assert mirror_caption("a <c> cat at the left, Right of a tree") == "a <c> cat at the right, Left of a tree"
    assert mirror_caption("bright lefty cat") == "bright lefty cat"  # whole words only
    ids, mirrored = torch.tensor([[1, 2], [3, 4]]), torch.tensor([[5, 6], [7, 8]])
    assert mirrored_ids(ids, mirrored, torch.tensor([False, True])).tolist() == [[1, 2], [7, 8]]


def test_bad_inputs(tmp_path):
    with pytest.raises(InputError, match="0 images"):
        load_concept(tmp_path, "dog", "<rex>", 16)
    with pytest.raises(InputError, match="does not exist"):
        load_concept(tmp_path / "missing", "dog", "<rex>", 16)
    _img(tmp_path / "ok.png")
    (tmp_path / "broken.jpg").write_bytes(b"not an image at all")
    with pytest.raises(InputError, match="broken.jpg"):
        load_concept(tmp_path, "dog", "<rex>", 16)
    (tmp_path / "broken.jpg").unlink()
    _img(tmp_path / "ok2.png")
    with pytest.raises(InputError, match="1 non-empty caption"):
        load_concept(tmp_path, "dog", "<rex>", 16, captions=["only one"])


def test_bundled_examples():
    ex = example_concepts()
    assert set(ex) == {"toy", "mug", "sculpture", "backpack"}
    for name, (folder, word) in ex.items():
        d = load_concept(folder, word, f"<{name}>", 64, augment=False)
        assert len(d) == 4 and all(f"<{name}> {word}" in c for c in d.train_captions)


def test_a_caption_that_holds_the_token_is_used_as_it_is(tmp_path):
    """The world's and a user's natural captions already write the token: it is never inserted twice."""
    from cns_ray.learn.data import selection_caption

    assert with_placeholder("a photo of <rex> dog", "<rex>", "dog") == "a photo of <rex> dog"
    assert with_placeholder("a large <rex> circle at the left", "<rex>", "circle") == "a large <rex> circle at the left"
    assert with_placeholder(with_placeholder("a dog", "<rex>", "dog"), "<rex>", "dog") == "a <rex> dog"  # idempotent
    # another concept's token is not this one's: it is inserted
    assert with_placeholder("a <mia> dog", "<rex>", "dog") == "a <mia> <rex> dog"
    _img(tmp_path / "a.png"), _img(tmp_path / "b.png")
    (tmp_path / "captions.txt").write_text("a photo of <rex> dog\na dog on grass\n")
    d = load_concept(tmp_path, "dog", "<rex>", 8)
    assert d.train_captions == ["a photo of <rex> dog", "a <rex> dog on grass"]
    # selection scores what learning trains on, minus the placeholder (the base cannot spell it)
    assert d.captions == ["a photo of dog", "a dog on grass"]
    assert [selection_caption(t) for t in d.train_captions] == d.captions
    assert selection_caption("a small <a> circle at the left and a small <b> cross at the right") == \
        "a small circle at the left and a small cross at the right"
