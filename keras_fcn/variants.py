"""The names of the FCN variants and geometries, free of TensorFlow (the config and the CLI list them)."""

VARIANTS = ("fcn32s", "fcn16s", "fcn8s", "fcn8s_at_once")
STRIDE = 32  # the output stride of every variant: pool5 is 1/32 of the input
# "aligned": padded to a multiple of 32, no crops; "caffe": the reference's 100-pixel padding and crops.
GEOMETRIES = ("aligned", "caffe")
