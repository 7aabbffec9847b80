"""What feeds a rank: the data formats (formats.py: FORMATS, folder | shards | synthetic), the sample
index (index.py), samplers (samplers.py), loaders and batches (loaders.py), decoding in loader workers
(images.py, workers.py) or on the device (device_decode.py), packing into shards (pack.py).

The package itself imports nothing: the launcher reads formats.py and layout.py without torch.
"""
