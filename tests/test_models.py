"""Every intermediate shape of the paper's architecture tables."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from vae_attn import attention, models


def _shapes(model, input_shape):
  x = jnp.zeros(input_shape)
  variables = jax.eval_shape(
    lambda: model.init(jax.random.key(0), x, jax.random.key(1))
  )
  encode = functools.partial(model.apply, method=model.encode)
  layers = attention.layer_paths(encode, variables, x)
  outputs = jax.eval_shape(
    lambda v: model.apply(v, x, jax.random.key(1)), variables
  )
  return variables, layers, outputs


def _decoder_shapes(model, variables, latent_dim):
  z = jnp.zeros((2, latent_dim))
  decode = functools.partial(model.apply, method=model.decode)
  return attention.layer_paths(decode, variables, z)


def test_mnist_vae_shapes():
  model = models.make_model("mnist")
  variables, layers, (logits, mu, logvar, z) = _shapes(model, (2, 28, 28, 1))
  assert layers["encoder/conv1"] == (2, 14, 14, 64)
  assert layers["encoder/conv2"] == (2, 7, 7, 128)
  params = variables["params"]
  assert params["encoder"]["head"]["fc1"]["kernel"].shape == (6272, 1024)
  assert params["encoder"]["head"]["mu"]["kernel"].shape == (1024, 32)
  assert params["decoder"]["fc2"]["kernel"].shape == (1024, 6272)
  dec = _decoder_shapes(model, variables, 32)
  assert dec["decoder/deconv1"] == (2, 14, 14, 64)
  assert logits.shape == (2, 28, 28, 1)
  assert mu.shape == logvar.shape == z.shape == (2, 32)


def test_ped1_vae_shapes():
  model = models.make_model("ped1")
  variables, layers, (logits, mu, _, _) = _shapes(model, (2, 100, 100, 1))
  assert layers["encoder/conv1"] == (2, 50, 50, 64)
  assert layers["encoder/conv2"] == (2, 25, 25, 128)
  assert layers["encoder/conv3"] == (2, 12, 12, 256)
  params = variables["params"]
  assert params["encoder"]["head"]["fc1"]["kernel"].shape == (36864, 1024)
  dec = _decoder_shapes(model, variables, 32)
  assert dec["decoder/deconv1"] == (2, 25, 25, 128)
  assert dec["decoder/deconv2"] == (2, 50, 50, 64)
  assert logits.shape == (2, 100, 100, 1)
  assert mu.shape == (2, 32)


def test_resnet18_vae_shapes():
  model = models.make_model("resnet18")
  variables, layers, (logits, mu, _, _) = _shapes(model, (1, 256, 256, 3))
  assert layers["encoder/stem"] == (1, 128, 128, 64)
  assert layers["encoder/stage1_block2"] == (1, 64, 64, 64)
  assert layers["encoder/stage2_block1/conv1"] == (1, 32, 32, 128)
  assert layers["encoder/stage3_block2"] == (1, 16, 16, 256)
  assert layers["encoder/stage4_block2"] == (1, 8, 8, 512)
  params = variables["params"]
  assert params["encoder"]["head"]["fc1"]["kernel"].shape == (8 * 8 * 512, 1024)
  assert params["decoder"]["fc2"]["kernel"].shape == (1024, 1024 * 4 * 4)
  assert "batch_stats" in variables
  dec = _decoder_shapes(model, variables, 32)
  sizes = [dec[f"decoder/deconv{i}"][1:] for i in range(1, 7)]
  assert sizes == [
    (8, 8, 512),
    (16, 16, 256),
    (32, 32, 128),
    (64, 64, 64),
    (128, 128, 32),
    (256, 256, 3),
  ]
  assert logits.shape == (1, 256, 256, 3)
  assert mu.shape == (1, 32)
  # 11.2M conv/BN parameters of ResNet-18 without avg-pool and fc.
  feats = {k: v for k, v in params["encoder"].items() if k != "head"}
  count = sum(p.size for p in jax.tree.leaves(feats))
  assert 11_100_000 < count < 11_300_000


def test_resnet18_rejects_sizes_not_multiple_of_64():
  with pytest.raises(ValueError, match="multiple of 64"):
    models.make_model("resnet18", image_size=100)


def test_resnet18_batchnorm_train_and_eval_modes():
  encoder = models.ResNet18Encoder(latent_dim=8)
  x = jax.random.uniform(jax.random.key(0), (2, 32, 32, 3))
  variables = jax.jit(encoder.init)(jax.random.key(0), x)
  train = jax.jit(
    lambda v, x: encoder.apply(v, x, True, mutable=["batch_stats"])
  )
  _, updates = train(variables, x)
  old = jax.tree.leaves(variables["batch_stats"])
  new = jax.tree.leaves(updates["batch_stats"])
  assert any(bool(jnp.any(a != b)) for a, b in zip(old, new, strict=True))
  evaluate = jax.jit(encoder.apply)
  mu_eval, _ = evaluate(variables, x)
  mu_one, _ = evaluate(variables, x[:1])
  # Eval mode: examples are independent (attention relies on it).
  assert jnp.allclose(mu_eval[:1], mu_one, atol=1e-5)


def test_factorvae_and_discriminator_shapes():
  model = models.make_model("factorvae")
  variables, layers, (logits, mu, _, z) = _shapes(model, (2, 64, 64, 1))
  assert layers["encoder/conv1"] == (2, 32, 32, 32)
  assert layers["encoder/conv2"] == (2, 16, 16, 32)
  assert layers["encoder/conv3"] == (2, 8, 8, 64)
  assert layers["encoder/conv4"] == (2, 4, 4, 64)
  params = variables["params"]
  assert params["encoder"]["head"]["fc1"]["kernel"].shape == (1024, 128)
  assert params["decoder"]["fc2"]["kernel"].shape == (128, 1024)
  assert logits.shape == (2, 64, 64, 1)
  assert mu.shape == (2, 32)
  disc = models.Discriminator()
  z = jnp.zeros(z.shape)
  dvars = disc.init(jax.random.key(0), z)
  assert disc.apply(dvars, z).shape == (2, 2)
  hidden = [k for k in dvars["params"] if k.startswith("fc")]
  assert len(hidden) == 5
  assert dvars["params"]["fc1"]["kernel"].shape == (32, 1000)


@pytest.mark.parametrize(
  "name, kwargs, shape",
  [
    ("mnist", {}, (28, 28, 1)),
    ("ped1", {}, (100, 100, 1)),
    ("factorvae", {}, (64, 64, 1)),
    ("resnet18", {"image_size": 64}, (64, 64, 3)),
    ("resnet18", {"image_size": 128}, (128, 128, 3)),
  ],
)
def test_input_shape_is_the_shape_each_decoder_produces(name, kwargs, shape):
  """The one home of each architecture's input shape (trainers, run specs
  and evaluation read it)."""
  model = models.make_model(name, latent_dim=5, **kwargs)
  assert models.input_shape(model) == shape


def test_make_model_rejects_unknown_names():
  with pytest.raises(ValueError, match="choose one of"):
    models.make_model("vgg")


def test_default_layers_exist():
  for name, input_shape in [
    ("mnist", (1, 28, 28, 1)),
    ("ped1", (1, 100, 100, 1)),
    ("factorvae", (1, 64, 64, 1)),
    ("resnet18", (1, 256, 256, 3)),
  ]:
    _, layers, _ = _shapes(models.make_model(name), input_shape)
    assert models.DEFAULT_LAYERS[name] in layers


def test_transposed_conv_is_torch_conv_transpose_2d():
  """ConvT k/s/p dilates the input by s, pads it by k - 1 - p and convolves
  it with the unflipped kernel (torch.nn.ConvTranspose2d's sizes); its
  parameters keep the names and shapes of earlier checkpoints."""
  spec = models.ConvSpec(4, kernel=5, stride=2, padding=1)
  block = models.DeconvBlock(spec, activation=False)
  x = jax.random.normal(jax.random.key(0), (2, 12, 12, 3))
  params = block.init(jax.random.key(1), x)["params"]
  shapes = jax.tree.map(jnp.shape, params)
  assert shapes == {"deconv": {"kernel": (5, 5, 3, 4), "bias": (4,)}}
  kernel = params["deconv"]["kernel"]
  bias = jax.random.normal(jax.random.key(2), (4,))
  got = block.apply({"params": {"deconv": {"kernel": kernel, "bias": bias}}}, x)
  want = bias + lax.conv_general_dilated(
    x,
    kernel,
    (1, 1),
    ((3, 3), (3, 3)),
    lhs_dilation=(2, 2),
    dimension_numbers=("NHWC", "HWIO", "NHWC"),
  )
  assert got.shape == (2, 25, 25, 4)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
