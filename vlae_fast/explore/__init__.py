"""Looking into a trained ladder by hand: the live latent explorer (`vlae explore`: session.py holds the
model and checks every request, server.py serves it and the static page), level swapping (`vlae swap`)
and the image-file reader both use (inputs.py).

Everything goes through the model interface of models/base.py (per-level controls: VLAE z_l, HVAE eps_l),
so every model the toolkit trains works here. The web server stack (starlette + uvicorn, the `explore`
extra) is imported only by server.py.
"""
