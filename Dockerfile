# mmdemo app, CPU by default.
#   docker build -t mmdemo . && docker run -p 7860:7860 mmdemo
# GPU variant: build with a CUDA torch wheel instead of the CPU one, e.g.
#   docker build --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 -t mmdemo-gpu .
#   docker run --gpus all -p 7860:7860 mmdemo-gpu
# (the app uses CUDA with bf16/fp16 autocast whenever torch sees a GPU).
FROM python:3.11-slim

ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    GRADIO_ANALYTICS_ENABLED=False \
    GRADIO_SERVER_NAME=0.0.0.0 \
    GRADIO_SERVER_PORT=7860 \
    HF_HUB_OFFLINE=1 \
    MMDEMO_CHECKPOINT_DIR=/data/checkpoints

RUN useradd --create-home --uid 1000 user && mkdir -p /data/checkpoints && chown -R user /data
WORKDIR /home/user/app
COPY --chown=user requirements.txt .
RUN pip install --extra-index-url "$TORCH_INDEX" -r requirements.txt
COPY --chown=user . .

USER user
EXPOSE 7860
CMD ["python", "app.py"]
