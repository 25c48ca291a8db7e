import shutil

import pytest

from data_prep.image.layout import LayoutError, read_layout


def test_class_index_is_the_sorted_synset_position(demo_corpus):
    layout = read_layout(demo_corpus)
    assert list(layout.wnids) == sorted(layout.wnids)
    for item in layout.items("train"):
        assert layout.wnids[item.label] == item.wnid and item.path.startswith(f"train/{item.wnid}/")
    assert layout.names[layout.wnids[0]] == "disc"


def test_val_from_per_class_folders_when_there_is_no_csv(demo_corpus, tmp_path):
    root = tmp_path / "imagenet"
    shutil.copytree(demo_corpus / "train", root / "train")
    (root / "val").mkdir()
    for wnid in ("n90000001", "n90000003"):
        shutil.copytree(demo_corpus / "train" / wnid, root / "val" / wnid)
    layout = read_layout(root)
    items = layout.items("val")
    assert {i.wnid for i in items} == {"n90000001", "n90000003"}
    assert all(layout.wnids[i.label] == i.wnid for i in items)


def test_val_folder_with_an_unknown_synset_is_refused(demo_corpus, tmp_path):
    root = tmp_path / "imagenet"
    shutil.copytree(demo_corpus / "train", root / "train")
    (root / "val" / "n12345678").mkdir(parents=True)
    with pytest.raises(LayoutError, match="not a train synset folder"):
        read_layout(root).items("val")
