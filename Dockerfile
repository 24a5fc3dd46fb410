# zprl: same lock, same steps as the README quick start.
FROM python:3.12-slim-bookworm
RUN apt-get update && apt-get install -y --no-install-recommends \
        libegl1 libegl-mesa0 libgl1-mesa-dri libglib2.0-0 git build-essential cmake \
    && rm -rf /var/lib/apt/lists/*
ENV MUJOCO_GL=egl PYOPENGL_PLATFORM=egl UV_LINK_MODE=copy
RUN pip install --no-cache-dir uv
WORKDIR /workspace/zprl
COPY pyproject.toml uv.lock .python-version README.md ./
COPY src ./src
COPY plugins ./plugins
RUN uv sync --locked --extra dev
COPY . .
# README step 2 (tests) as the image's check; step 1 (generate data + pretrain) is the default command.
RUN uv run --locked pytest -q -x tests/test_envs.py
CMD ["bash", "-c", "uv run zprl data generate --task lift --demos 100 --out data/lift_mh && uv run lightning fit -c conf/pretrain.yaml"]
