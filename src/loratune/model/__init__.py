"""The model: loading a pretrained classifier, the method table (what each training method builds, trains, saves
and loads), pooling, and the device and precision it runs in."""
