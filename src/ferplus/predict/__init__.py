"""Using a trained model: faces found and cropped, scored, tracked through videos, and reported.

The training side (data, engine, step, ...) is never imported from here: prediction needs only
the network's file, the crop preprocessing and OpenCV.
"""
