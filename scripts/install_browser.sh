#!/usr/bin/env bash
# Debian's Chromium and its WebDriver, for the playground's browser test
# (tests/test_playground.py drives /usr/bin/chromium with playwright). Idempotent: does nothing
# when /usr/bin/chromium is already there. Needs root (CI and the workplace machines run as
# root); playwright's own browser download is never used (this machine reaches only package
# registries).
set -euo pipefail

if [ -x /usr/bin/chromium ]; then
    echo "install_browser: /usr/bin/chromium is present"
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "install_browser: run as root to install chromium (apt-get)" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq chromium chromium-driver
echo "install_browser: installed $(/usr/bin/chromium --version 2>/dev/null)"
