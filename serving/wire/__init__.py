"""What travels: the client's TF Serving messages (`messages`, built without TensorFlow), the one TensorProto
codec of client and server (`tensor_codec`), the REST JSON codec (`json_codec`), tf.Examples (`examples`),
and image bytes (`images`)."""
