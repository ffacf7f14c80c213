# Two commands on a fresh machine:  `make demo` (set up + generate digits)  and  `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: setup demo test bench bench-bpe flagship clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(PY) cli.py generate --digits 0-9

test: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) benchmarks/train_speed.py
	$(PY) benchmarks/sample_speed.py

# generate-and-rerank latency of the seed architecture with 128 BPE tokens (trains it first: ~25 min, one core)
runs/seedbpe128/best/model.safetensors: | $(STAMP)
	$(PY) cli.py train --preset seed --dropout 0 --tokenizer bpe --bpe-vocab 128 --lr 2e-3 --minutes 25 \
		--threads 1 --eval-every 300 --out runs/seedbpe128

bench-bpe: runs/seedbpe128/best/model.safetensors
	$(PY) benchmarks/sample_speed.py --checkpoint runs/seedbpe128/best --repeats 9 --no-cache-repeats 3

# the shipped checkpoints/gpt: two stages on one CPU core each (about 4 hours in all)
flagship: $(STAMP)
	$(PY) cli.py train --recipe flagship --minutes 115 --threads 1 --eval-every 300 --eval-images 1000 --out runs/flagship
	$(PY) cli.py train --recipe flagship --init-from runs/flagship/best --lr 1e-3 --warmup-steps 100 \
		--seed 2 --minutes 112 --threads 1 --eval-every 600 --eval-images 1000 --out runs/flagship2
	$(PY) cli.py ship runs/flagship2/best --out checkpoints/gpt

clean:
	rm -rf $(VENV) runs decoded .pytest_cache
