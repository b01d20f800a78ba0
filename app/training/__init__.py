"""Training a GAN on the user's own images: `atelier train` (see `cli`).

Modules: `data` (an image folder decoded as uploads are, squared, held in one tensor),
`nets` (the served DCGAN generator and its discriminator), `trainer` (one step at a time,
EMA, the exact-resume state), `session` (the loop: checkpoints, samples, evaluations,
progress, Ctrl-C, disk room), `metrics` (KID/FID on VGG19 features), `export` (the result
as a catalog model), `errors`, `cli`.
"""
