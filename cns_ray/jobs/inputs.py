"""Concept images for a learning run: a local folder, an ``s3://`` folder, or a folder under the store.

A Train worker may run on another node than the one the request came from, so remote inputs are copied to a local
temporary folder first. Local folders are used in place.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from dataclasses import dataclass

import pyarrow.fs as pafs

from cns_ray.errors import InputError
from cns_ray.fs import resolve

log = logging.getLogger(__name__)

STORE_PREFIX = "store:"
"""``store:inputs/rex`` names a folder relative to the concept store's root."""


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
    if not images:
        raise InputError("images is empty: give a folder of png/jpg/webp images (local, s3://..., or store:REL)")
    if images.startswith(STORE_PREFIX):
        if not store_uri:
            raise InputError(f"images={images!r} is relative to the store, but no store was given")
        rel = images[len(STORE_PREFIX) :].strip("/")
        if not rel or ".." in rel.split("/"):
            raise InputError(f"images={images!r}: give a folder inside the store, e.g. store:inputs/rex")
        loc = resolve(store_uri)
        if not loc.is_s3:
            return _local(loc.join(rel), images)
        return _copy_folder(f"s3://{loc.join(rel)}")
    if images.startswith("s3://"):
        return _copy_folder(images)
    return _local(images.removeprefix("file://"), images)


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
