# Two commands on a fresh machine:  `make demo` (set up + generate digits)  and  `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: setup demo test test-fast serve bench flagship clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

# the main job on the shipped checkpoint: pictures in outputs/ (untracked)
demo: $(STAMP)
	$(PY) -m mnisttext generate --digits 0-9

test: $(STAMP)
	$(PY) -m pytest -q

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

serve: $(STAMP)
	$(PY) -m mnisttext serve

bench: $(STAMP)
	$(PY) benchmarks/sample_speed.py
	$(PY) benchmarks/train_speed.py

# the shipped checkpoints/gpt: the new recipe with shift augmentation, in two stages on one CPU
# core each (about 4 hours of CPU time; --clock cpu counts this process's CPU time, so other work
# on the machine does not shorten the schedule)
RECIPE2 := --recipe flagship --rope 1d --qk-norm --act relu2 --zero-init-proj --n-kv-head 1
flagship: $(STAMP)
	$(PY) -m mnisttext train $(RECIPE2) --optimizer muon --shift-aug 0.5 --minutes 113 --clock cpu \
		--threads 1 --eval-every 300 --eval-images 1000 --final-eval-images 1000 --out runs/flagship_shift
	$(PY) -m mnisttext train --recipe flagship --init-from runs/flagship_shift/best --optimizer muon \
		--lr 1e-3 --muon-lr 0.01 --warmup-steps 100 --seed 2 --shift-aug 0.5 --minutes 114 --clock cpu \
		--threads 1 --eval-every 600 --eval-images 1000 --final-eval-images 1000 --out runs/flagship_shift_b
	$(PY) -m mnisttext ship runs/flagship_shift_b/best --out runs/shipped-gpt

clean:
	rm -rf $(VENV) runs outputs .pytest_cache
