import torch

from anomalib_ext.models.components import FrozenFeatureCache


class CountingEncoder:
    def __init__(self) -> None:
        self.images_seen = 0

    def __call__(self, images: torch.Tensor) -> list[torch.Tensor]:
        self.images_seen += len(images)
        return [images.mean(dim=1, keepdim=True), images.amax(dim=(1, 2, 3))]


def test_each_image_is_encoded_once_and_served_identically_afterwards() -> None:
    encoder, cache = CountingEncoder(), FrozenFeatureCache()
    images = torch.rand(4, 3, 8, 8)
    keys = ["a", "b", "c", "d"]
    first = cache(encoder, images, keys)
    # another batch order, as a shuffling dataloader gives
    order = [2, 0, 3, 1]
    second = cache(encoder, images[order], [keys[i] for i in order])
    assert encoder.images_seen == 4
    for cached, direct in zip(second, encoder(images[order]), strict=True):
        assert torch.equal(cached, direct)
    assert [level.shape for level in first] == [(4, 1, 8, 8), (4,)]


def test_a_batch_mixing_new_and_cached_images_encodes_only_the_new_ones() -> None:
    encoder, cache = CountingEncoder(), FrozenFeatureCache()
    images = torch.rand(3, 3, 8, 8)
    cache(encoder, images[:2], ["a", "b"])
    out = cache(encoder, images, ["a", "b", "c"])
    assert encoder.images_seen == 3
    assert torch.equal(out[0], images.mean(dim=1, keepdim=True))


def test_augmented_images_switch_the_cache_off_instead_of_serving_stale_features() -> None:
    encoder, cache = CountingEncoder(), FrozenFeatureCache()
    images = torch.rand(2, 3, 8, 8)
    cache(encoder, images, ["a", "b"])
    flipped = images.flip(-1)  # same pixel sum, other image
    out = cache(encoder, flipped, ["a", "b"])
    assert torch.equal(out[0], flipped.mean(dim=1, keepdim=True))
    assert not cache.enabled
    assert len(cache) == 0


def test_without_keys_or_disabled_it_is_a_plain_call() -> None:
    encoder = CountingEncoder()
    images = torch.rand(2, 3, 8, 8)
    FrozenFeatureCache()(encoder, images, None)
    FrozenFeatureCache(enabled=False)(encoder, images, ["a", "b"])
    FrozenFeatureCache(enabled=False)(encoder, images, ["a", "b"])
    assert encoder.images_seen == 6
