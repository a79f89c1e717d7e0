"""TFRecord builders, one module per source format, all writing through `shards.write_split`.

Import the builder you need from its module (`tfrecord_builders.voc.build_voc`):
this package imports none of them, so that reading records (training,
evaluation) does not load what only one source needs (pycocotools for COCO,
scipy for SBD's .mat files).
"""
