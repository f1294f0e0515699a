"""The generated image folder most training tests read: 3 classes x 10 images."""
import pytest

from tiny_models import write_image_folder


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> str:
    return write_image_folder(tmp_path_factory.mktemp("images"))
