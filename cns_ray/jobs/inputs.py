"""Concept images for a learning run: a local folder, an ``s3://`` folder, or a folder under the store
(``store:uploads/...`` from the HTTP learn route, ``store:inputs/...``), parsed once into an :class:`ImagesSpec`.

A Train worker may run on another node than the one the request came from, so remote inputs are copied to a local
temporary folder first. Local folders are used in place.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from typing import Literal

import pyarrow.fs as pafs

from cns_ray.errors import InputError, InvalidNameError
from cns_ray.fs import resolve
from cns_ray.store.layout import STORE_REF, parse_store_ref, root_location, store_ref

log = logging.getLogger(__name__)

STORE_PREFIX = STORE_REF
"""``store:inputs/rex`` names a folder relative to the concept store's root."""


@dataclass(frozen=True)
class ImagesSpec:
    """Where a run's images are, parsed once: a local folder, an ``s3://`` folder, or ``store:REL`` under the store."""

    kind: Literal["local", "s3", "store"]
    value: str
    """The local path (as given, ``file://`` removed), the s3:// URI, or REL."""

    @classmethod
    def parse(cls, images: str) -> "ImagesSpec":
        if not images:
            raise InputError("images is empty: give a folder of png/jpg/webp images (local, s3://..., or store:REL)")
        if images.startswith(STORE_REF):
            try:
                return cls("store", parse_store_ref(images))
            except InvalidNameError as e:
                raise InputError(str(e)) from e
        if images.startswith("s3://"):
            return cls("s3", images)
        if "://" in images and not images.startswith("file://"):
            raise InputError(f"images={images!r}: unsupported scheme; give a local folder, s3://bucket/prefix or store:REL")
        return cls("local", images.removeprefix("file://"))

    def for_submission(self) -> str:
        """The spec as a worker on another node or cwd reads it: local folders made absolute."""
        if self.kind == "local":
            return os.path.abspath(os.path.expanduser(self.value))
        return self.value if self.kind == "s3" else store_ref(self.value)


@dataclass
class LocalImages:
    """A local folder of images; ``cleanup()`` removes it when it is a temporary copy."""

    path: str
    temporary: bool = False

    def cleanup(self) -> None:
        if self.temporary:
            shutil.rmtree(self.path, ignore_errors=True)

    def __enter__(self) -> "LocalImages":
        return self

    def __exit__(self, *exc) -> None:
        self.cleanup()


def _copy_folder(uri: str) -> LocalImages:
    loc = resolve(uri)
    info = loc.fs.get_file_info(loc.path)
    if info.type != pafs.FileType.Directory:
        raise InputError(
            f"images={uri!r} is not a folder (found {info.type.name}): give a folder of png/jpg/webp images"
        )
    dest = tempfile.mkdtemp(prefix="cns-images-")
    try:
        pafs.copy_files(loc.path, dest, source_filesystem=loc.fs, destination_filesystem=pafs.LocalFileSystem())
    except Exception as e:
        shutil.rmtree(dest, ignore_errors=True)
        raise InputError(f"could not copy images from {uri!r}: {e}") from e
    log.info("copied images %s -> %s", uri, dest)
    return LocalImages(dest, temporary=True)


def materialize_images(images: str, store_uri: str | None = None) -> LocalImages:
    """Make ``images`` a local folder.

    ``images`` is a local folder, ``s3://bucket/prefix``, ``file://...``, or ``store:REL`` (a folder relative to
    the store root, ``store_uri``). Raises :class:`InputError` naming the value when it cannot be found.
    """
    spec = ImagesSpec.parse(images)
    if spec.kind == "store":
        if not store_uri:
            raise InputError(f"images={images!r} is relative to the store, but no store was given")
        loc = root_location(store_uri)
        if not loc.is_s3:
            return _local(loc.join(spec.value), images)
        return _copy_folder(f"s3://{loc.join(spec.value)}")
    if spec.kind == "s3":
        return _copy_folder(spec.value)
    return _local(spec.value, images)


def _local(path: str, given: str) -> LocalImages:
    path = os.path.expanduser(path)
    if not os.path.isdir(path):
        raise InputError(
            f"images={given!r} is not a folder on this node (cwd {os.getcwd()}): give an existing folder of "
            "png/jpg/webp images, an s3://bucket/prefix folder, or store:REL for a folder under the store"
        )
    return LocalImages(os.path.abspath(path), temporary=False)


INPUTS_KEY = "inputs"
"""Key of a concept record's ``stats`` holding what it was learned from (what ``cns concepts purge`` replays)."""


def recorded_inputs(request, cfg) -> dict:
    """What a learning run of ``request`` (a ConceptRequest, its ``images`` as given: a local folder, s3://, or
    store:REL) with ``cfg`` (a LearnerConfig, resolved) needs to be replayed: stored in the concept's stats."""
    return {"images": request.images, "class_word": request.class_word, "token": request.token,
            "captions": request.captions, "learner": cfg.to_dict()}
