#!/usr/bin/env bash
# Debian's Orthanc PACS (and dicom3tools' IOD validator) for the PACS round-trip tests.
# The tests start their own Orthanc on loopback; the system service is not used.
set -eu
if command -v Orthanc >/dev/null 2>&1 && command -v dciodvfy >/dev/null 2>&1; then exit 0; fi
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "Orthanc not installed and cannot install it here: the PACS tests will be skipped" >&2
  exit 0
fi
apt-get update -qq >/dev/null
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq orthanc dicom3tools >/dev/null
