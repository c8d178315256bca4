# CUDA-capable image: PyPI's Linux torch wheel (pinned in requirements.txt) ships its own
# CUDA runtime, so only the NVIDIA driver is needed on the host (docker run --gpus all).
#   serve the app:        docker run --gpus all -p 7860:7860 pengwin-demo
#   run the watcher:      docker run -d --restart unless-stopped --gpus all -v /srv/pengwin:/data \
#                           pengwin-demo python -m watcher --inbox /data/inbox \
#                           --outbox /data/outbox --polling
#   (inbox and work area must be on one mount: claiming a series is an atomic rename)
#   DICOM node:           add  -p 11112:11112 ... --dicom-port 11112 --send-to PACS:4242:ORTHANC
#   mercure module:       docker build --target mercure -t pengwin-mercure .
#                         (mercure runs it with MERCURE_IN_DIR/MERCURE_OUT_DIR; docs/watcher.md)
FROM python:3.11-slim-bookworm AS base

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    GRADIO_SERVER_NAME=0.0.0.0 \
    GRADIO_SERVER_PORT=7860 \
    nnUNet_raw=/tmp/nnunet/raw \
    nnUNet_preprocessed=/tmp/nnunet/preprocessed \
    nnUNet_results=/tmp/nnunet/results

RUN apt-get update \
    && apt-get install -y --no-install-recommends libgl1 libglib2.0-0 \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY requirements.txt .
RUN pip install -r requirements.txt

COPY . .
# the package itself (its dependencies are installed above): pengwin-demo, pengwin-watcher
RUN pip install --no-deps .
RUN useradd --create-home --uid 1000 pengwin && chown -R pengwin /app
USER pengwin

# mercure processing module: reads $MERCURE_IN_DIR, writes DICOM results to $MERCURE_OUT_DIR
FROM base AS mercure
CMD ["python", "-m", "watcher.mercure"]

# the default target (last stage): the web app
FROM base AS app
EXPOSE 7860 11112
CMD ["python", "app.py"]
