#!/bin/bash
# usage: q.sh NAME args...   (runs in background, log in runs/NAME.log)
cd "$(dirname "$0")/../.." && . .venv/bin/activate
name=$1; shift
python experiments/rg/run.py --out runs/$name "$@" > runs/$name.log 2>&1
