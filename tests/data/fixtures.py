"""Small datasets in real on-disk formats, generated for the tests.

VOC and SBD come from `deeplabv3_tf.data.synthetic.write_voc_dataset` (also used by
the demo); COCO, Cityscapes, folder and classification fixtures are here.
"""

import csv
import json
import os

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from deeplabv3_tf.data.synthetic import draw_scene


def read_records(pattern):
    """All serialised examples of the shards matching `pattern`, in file order."""
    import tensorflow as tf

    files = sorted(tf.io.gfile.glob(pattern))
    return [r.numpy() for r in tf.data.TFRecordDataset(files)]


def encode_index(task, die_at=None, pid_dir=None, delay=0.0):
    """A write_split encode function: an Example holding the task's payload.

    The process encoding payload `die_at` exits at once, as a killed worker would.
    With `pid_dir`, the encoding process leaves an empty file named by its pid
    there; each example takes `delay` seconds more.
    """
    import time

    import tensorflow as tf

    from deeplabv3_tf.data.tfrecord_builders.shards import Encoded

    if task.payload == die_at:
        os._exit(3)
    if pid_dir is not None:
        open(os.path.join(pid_dir, str(os.getpid())), "w").close()
    time.sleep(delay)
    example = tf.train.Example(features=tf.train.Features(feature={
        "index": tf.train.Feature(int64_list=tf.train.Int64List(value=[task.payload]))}))
    return Encoded(example.SerializeToString(), np.ones(1, np.int64))


def parse_segmentation(serialized):
    """(example id, image uint8 [H, W, 3], label uint8 [H, W], feature dict)."""
    import io

    import tensorflow as tf

    example = tf.train.Example.FromString(serialized)
    feature = example.features.feature
    image = np.asarray(Image.open(io.BytesIO(feature["image/encoded"].bytes_list.value[0])))
    label = np.asarray(Image.open(io.BytesIO(
        feature["image/segmentation/class/encoded"].bytes_list.value[0])))
    return (feature["image/filename"].bytes_list.value[0].decode(), image, label, feature)


def write_coco(root):
    """A COCO instances file with polygons, overlaps and a crowd RLE.

    Images (all 80x100, HxW):
      1: a person polygon (rows 10..49, cols 10..59) overlapping a dog polygon
         (rows 30..69, cols 40..89): the overlap becomes 255; a crowd RLE of
         'person' at rows 70..79, cols 0..19 becomes 255.
      2: two 'car' rectangles that overlap: same class, no conflict; plus a
         'giraffe' (not a VOC class) that stays background.
      3: a tiny bottle (10x10 = 100 px): filtered out (<= 1000 VOC pixels).
      4: only a giraffe: no VOC annotation, not written at all.
    Returns (annotations path, images dir, {image id: expected label}).
    """
    images_dir = os.path.join(root, "images")
    os.makedirs(images_dir, exist_ok=True)
    h, w = 80, 100
    categories = [{"id": 1, "name": "person"}, {"id": 18, "name": "dog"},
                  {"id": 3, "name": "car"}, {"id": 25, "name": "giraffe"},
                  {"id": 44, "name": "bottle"}]

    def rect(y0, y1, x0, x1):
        # Polygon of the pixel block rows y0..y1-1, cols x0..x1-1 (pixel edges).
        return [[x0, y0, x1, y0, x1, y1, x0, y1]]

    crowd = np.zeros((h, w), np.uint8)
    crowd[70:80, 0:20] = 1
    # Uncompressed RLE, as crowd annotations appear in the COCO files.
    counts, value, run = [], 0, 0
    for pixel in crowd.flatten(order="F"):
        if pixel == value:
            run += 1
        else:
            counts.append(run)
            value, run = pixel, 1
    counts.append(run)
    annotations = [
        {"id": 1, "image_id": 1, "category_id": 1, "iscrowd": 0, "segmentation": rect(10, 50, 10, 60)},
        {"id": 2, "image_id": 1, "category_id": 18, "iscrowd": 0, "segmentation": rect(30, 70, 40, 90)},
        {"id": 3, "image_id": 1, "category_id": 1, "iscrowd": 1,
         "segmentation": {"counts": counts, "size": [h, w]}},
        {"id": 4, "image_id": 2, "category_id": 3, "iscrowd": 0, "segmentation": rect(0, 40, 0, 50)},
        {"id": 5, "image_id": 2, "category_id": 3, "iscrowd": 0, "segmentation": rect(20, 60, 30, 80)},
        {"id": 6, "image_id": 2, "category_id": 25, "iscrowd": 0, "segmentation": rect(60, 80, 80, 100)},
        {"id": 7, "image_id": 3, "category_id": 44, "iscrowd": 0, "segmentation": rect(0, 10, 0, 10)},
        {"id": 8, "image_id": 4, "category_id": 25, "iscrowd": 0, "segmentation": rect(0, 40, 0, 40)},
    ]
    images = []
    rng = np.random.default_rng(0)
    for image_id in (1, 2, 3, 4):
        name = f"{image_id:012d}.jpg"
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(
            os.path.join(images_dir, name))
        images.append({"id": image_id, "file_name": name, "height": h, "width": w})
    path = os.path.join(root, "instances_train.json")
    with open(path, "w") as f:
        json.dump({"images": images, "annotations": annotations, "categories": categories}, f)

    def decoded(ann):
        rles = mask_utils.frPyObjects(ann["segmentation"], h, w)
        return mask_utils.decode(mask_utils.merge(rles) if isinstance(rles, list) else rles).astype(bool)

    person, dog = decoded(annotations[0]), decoded(annotations[1])
    label1 = np.zeros((h, w), np.uint8)
    label1[person] = 15
    label1[dog & ~person] = 12
    label1[person & dog] = 255
    label1[crowd.astype(bool)] = 255
    label2 = np.zeros((h, w), np.uint8)
    label2[decoded(annotations[3]) | decoded(annotations[4])] = 7
    return path, images_dir, {1: label1, 2: label2}


def write_cityscapes(root, split="train", cities=("aachen", "bochum"), per_city=2, size=(48, 96)):
    """leftImg8bit/gtFine trees; label ids 0..33 drawn at random. Returns {stem: labelIds}."""
    rng = np.random.default_rng(1)
    expected = {}
    for city in cities:
        image_dir = os.path.join(root, "leftImg8bit", split, city)
        label_dir = os.path.join(root, "gtFine", split, city)
        os.makedirs(image_dir, exist_ok=True)
        os.makedirs(label_dir, exist_ok=True)
        for i in range(per_city):
            stem = f"{city}_{i:06d}_000019"
            label_ids = rng.integers(0, 34, size, dtype=np.uint8)
            Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(
                os.path.join(image_dir, f"{stem}_leftImg8bit.png"))
            Image.fromarray(label_ids).save(os.path.join(label_dir, f"{stem}_gtFine_labelIds.png"))
            # Other gtFine files exist beside labelIds in the real release.
            Image.fromarray(label_ids).save(os.path.join(label_dir, f"{stem}_gtFine_instanceIds.png"))
            expected[stem] = label_ids
    return expected


def write_folder(root, num_classes=4, count=5, colour=False, ignore_value=99, seed=2):
    """images/<id>.{jpg|png}, masks/<id>.png (index with `ignore_value` voids, or
    colour via palette.json), train.txt. Returns (ids, {id: expected 0..C-1/255 label})."""
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(root, "images"), exist_ok=True)
    os.makedirs(os.path.join(root, "masks"), exist_ok=True)
    colours = [[0, 0, 0], [255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0]][:num_classes]
    void_colour = [255, 255, 255]
    with open(os.path.join(root, "palette.json"), "w") as f:
        json.dump({"colors": colours, "names": [f"class{i}" for i in range(num_classes)],
                   "ignore": [void_colour]}, f)
    ids, expected = [], {}
    for i in range(count):
        example_id = f"img_{i:03d}"
        height, width = int(rng.integers(30, 50)), int(rng.integers(30, 50))
        image, label = draw_scene(rng, height, width, num_classes=num_classes, void_width=1)
        extension = ".png" if i % 2 else ".jpg"
        Image.fromarray(image).save(os.path.join(root, "images", example_id + extension))
        if colour:
            rgb = np.array(colours + [void_colour] * (256 - num_classes), np.uint8)[label]
            rgb[label == 255] = void_colour
            Image.fromarray(rgb).save(os.path.join(root, "masks", example_id + ".png"))
        else:
            raw = np.where(label == 255, ignore_value, label).astype(np.uint8)
            Image.fromarray(raw).save(os.path.join(root, "masks", example_id + ".png"))
        ids.append(example_id)
        expected[example_id] = label
    with open(os.path.join(root, "train.txt"), "w") as f:
        f.write("".join(f"{i}\n" for i in ids))
    return ids, expected


def write_classification(root, fmt="csv"):
    """A manifest of 4 images with repeated labels and confidences. Returns its path."""
    rng = np.random.default_rng(3)
    os.makedirs(os.path.join(root, "img"), exist_ok=True)
    rows = [
        ("img/a.jpg", [7, 2, 7], [0.5, 0.9, 0.8], ["seven", "two", "seven"]),
        ("img/b.jpg", [0], [1.0], ["zero"]),
        ("img/c.png", [3, 1], [0.25, 0.75], ["three", "one"]),
        ("img/d.jpg", [5, 4, 9], [0.1, 0.2, 0.3], ["five", "four", "nine"]),
    ]
    for path, *_ in rows:
        Image.fromarray(rng.integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(
            os.path.join(root, path))
    if fmt == "csv":
        path = os.path.join(root, "manifest.csv")
        with open(path, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["image", "labels", "confidences", "names"])
            for image, labels, conf, names in rows:
                writer.writerow([image, ";".join(map(str, labels)), ";".join(map(str, conf)),
                                 ";".join(names)])
    else:
        path = os.path.join(root, "manifest.jsonl")
        with open(path, "w") as f:
            for image, labels, conf, names in rows:
                f.write(json.dumps({"image": image, "labels": labels, "confidences": conf,
                                    "names": names}) + "\n")
    return path
