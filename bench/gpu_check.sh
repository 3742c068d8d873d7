#!/usr/bin/env bash
# bench/gpu_check.sh: the project's GPU check of the CUDA precision path (issue #23), for one GPU
# and no network, in under 9 minutes. Run it from a checkout (any folder works):
#
#   bash bench/gpu_check.sh                                    # everything; results in outputs/gpu_check/
#   OUT=/tmp/gc BUDGET=300 bash bench/gpu_check.sh             # another folder, a shorter budget
#   PARTS=env,probes DEVICE=cpu bash bench/gpu_check.sh        # the CPU-capable parts (tests/test_gpu_check.py)
#
# Parts, in this order (PARTS selects; each is boxed by `timeout` and by what is left of BUDGET
# seconds, default 510; a part that fails, hangs or is skipped is recorded and the next one runs):
#   env      nvidia-smi, torch / CUDA / capability, which optional packages import; wheels carried
#            in .whl/ are installed offline first (pip --no-index --find-links .whl) into $WORK/site
#   probes   bench/gpu_probes.py: F1 InfoNCE under autocast, F2 DPO step 0, F3 chat vector, F7 RoPE
#            (and F7 once more under accelerate launch with params/accelerate/fsdp.yaml, bf16)
#   stages   params/micro.yaml 00-06 with device: cuda, precision: auto: `python -m lib.pipeline run`
#            (or bench/gpu_stages.py when Papermill is missing); each stage's time, losses, tokens/s,
#            05's ko_ppl before vs step-0 eval, 06's DPO step-0 reward accuracy and margin
#   qlora    05 with method: qlora on the micro profile, sharing 00-04 with 'stages' (bitsandbytes)
#   kvscore  ContextOnceHFLM vs lm-eval's HFLM on the GPU (gpu_probes.py --only kvscore), and
#            bench/eval_vs_lm_eval.py --quick (that script scores on the CPU: a plumbing check)
#   smoke    bench/gpu_smoke.py, alone on the GPU: tokens/s, model-FLOPs MFU, peak memory vs lib.run.plan
# probes, stages, qlora and kvscore use tiny models and run side by side; smoke runs after them.
#
# $OUT (default outputs/gpu_check) gets 7 files, so all of it comes back from a lent machine:
#   summary.txt   one line a part (status, seconds, key figures)   summary.json  the same, structured
#   env.txt       nvidia-smi and package versions                  probes.jsonl  gpu_probes.py's lines
#   stages.jsonl  key figures of each stage (bench/gpu_stages.py collect)
#   smoke.txt     gpu_smoke.py's table and JSON                    log.txt       every part's output (tails)
# Bulky work (stage runs, models) goes to $WORK (default ${TMPDIR:-/tmp}/kollama_gpu_check), emptied first.
# Nothing in lib/ is stubbed: a part that needs a missing package says so (SKIP) or fails (FAIL).
set -u

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT=${OUT:-$REPO/outputs/gpu_check}
WORK=${WORK:-${TMPDIR:-/tmp}/kollama_gpu_check}
BUDGET=${BUDGET:-510}
DEVICE=${DEVICE:-cuda}
PARTS=${PARTS:-env,probes,stages,qlora,kvscore,smoke}
T0=$(date +%s)

mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
rm -rf "$WORK"
mkdir -p "$WORK/logs"
rm -f "$OUT"/{summary.txt,summary.json,env.txt,probes.jsonl,stages.jsonl,smoke.txt,log.txt}
: >"$WORK/parts.tsv"
cd "$REPO" || exit 1

export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 \
  TOKENIZERS_PARALLELISM=false MPLBACKEND=Agg TQDM_MININTERVAL=10 HF_HOME="$WORK/hf" \
  KOLLAMA_OUTPUTS="$WORK/outputs"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"   # the checkout's lib/, installed or not

want() { [[ ",$PARTS," == *",$1,"* ]]; }
left() { echo $((BUDGET - ($(date +%s) - T0))); }
record() { printf '%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "$5" >>"$WORK/parts.tsv"; }   # name status rc s note
skip() { record "$1" SKIP - 0 "$2"; echo "[gpu_check] $1: SKIP ($2)"; }

# part NAME LIMIT CMD...: run CMD boxed by LIMIT s and by what is left of BUDGET (15 s kept for the
# summary); output in $WORK/logs/NAME.log; its status line in parts.tsv. Returns CMD's exit code.
part() {
  local name=$1 lim=$2 l s rc st
  shift 2
  l=$(($(left) - 15))
  ((lim > l)) && lim=$l
  if ((lim < 10)); then skip "$name" "budget spent"; return 99; fi
  echo "[gpu_check] $name: start (limit ${lim}s)"
  s=$(date +%s)
  timeout -k 10 "$lim" "$@" >"$WORK/logs/$name.log" 2>&1
  rc=$?
  case $rc in 0) st=ok ;; 124 | 137) st=TIMEOUT ;; *) st=FAIL ;; esac
  record "$name" "$st" "$rc" $(($(date +%s) - s)) "limit ${lim}s"
  echo "[gpu_check] $name: $st (rc $rc, $(($(date +%s) - s))s)"
  return $rc
}

# ------------------------------------------------------------------ env
PY=${PYTHON:-}
if [ -z "$PY" ]; then
  for c in "$REPO/.venv/bin/python" python3 python; do
    if command -v "$c" >/dev/null 2>&1 && "$c" -c "import torch" >/dev/null 2>&1; then PY=$(command -v "$c"); break; fi
  done
fi
if [ -z "$PY" ]; then
  record env FAIL 1 0 "no python that imports torch (set PYTHON=...)"
  echo "no python that imports torch" >"$OUT/env.txt"
else
  if ls "$REPO"/.whl/*.whl >/dev/null 2>&1; then
    part wheels 120 "$PY" -m pip install -q --no-index --find-links "$REPO/.whl" --no-deps --no-compile \
      --no-cache-dir --upgrade --target "$WORK/site" "$REPO"/.whl/*.whl
    export PYTHONPATH="$PYTHONPATH:$WORK/site"
  fi
  if want env; then
    cat >"$WORK/env.py" <<'PYEOF'
import importlib, json, os, sys
import torch
info = {"python": sys.executable, "python_version": sys.version.split()[0], "torch": torch.__version__,
        "cuda_build": torch.version.cuda, "cuda_available": torch.cuda.is_available(), "packages": {}}
if torch.cuda.is_available():
    info.update(device=torch.cuda.get_device_name(0), capability=".".join(map(str, torch.cuda.get_device_capability(0))),
                bf16_supported=torch.cuda.is_bf16_supported(),
                memory_gib=round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1))
for m in ("transformers", "accelerate", "peft", "tokenizers", "sentencepiece", "safetensors", "bitsandbytes",
          "lm_eval", "datasets", "nbformat", "papermill", "pandas", "matplotlib", "yaml"):
    try:
        info["packages"][m] = getattr(importlib.import_module(m), "__version__", "?")
    except Exception as e:  # noqa: BLE001 - any import failure is a finding here
        info["packages"][m] = f"MISSING ({type(e).__name__}: {str(e)[:120]})"
json.dump(info, open(os.environ["ENV_JSON"], "w"), indent=1)
print(json.dumps(info, indent=1))
want = os.environ.get("DEVICE", "cuda")
if want.startswith("cuda") and not torch.cuda.is_available():
    sys.exit(f"DEVICE={want} but torch {torch.__version__} (CUDA build {torch.version.cuda}) sees no GPU")
PYEOF
    { echo "== $(date -u '+%F %T') UTC  repo $REPO ($(git -C "$REPO" rev-parse --short HEAD 2>/dev/null)"\
           "+$(git -C "$REPO" status --porcelain 2>/dev/null | wc -l) changed files)  python $PY"
      nvidia-smi --query-gpu=name,memory.total,driver_version,compute_cap --format=csv 2>&1 || true
      nvidia-smi 2>&1 | head -n 20 || true; } >"$OUT/env.txt"
    ENV_JSON="$WORK/env.json" DEVICE="$DEVICE" part env 120 "$PY" "$WORK/env.py"
    cat "$WORK/logs/env.log" >>"$OUT/env.txt"
  fi
fi
GPU_OK=0
if [ -n "$PY" ] && "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" >/dev/null 2>&1; then GPU_OK=1; fi
have() { [ -n "$PY" ] && timeout 120 "$PY" -c "import $1" >/dev/null 2>&1; }
needs_gpu() { # NAME: true when the part can run on DEVICE; else records SKIP
  if [ -z "$PY" ]; then skip "$1" "no python with torch"; return 1; fi
  if [[ $DEVICE == cuda* && $GPU_OK != 1 ]]; then skip "$1" "DEVICE=$DEVICE but torch sees no GPU"; return 1; fi
  return 0
}

# ------------------------------------------------------------------ probes, stages, qlora, kvscore: side by side
STAGES_RUN=gpu_micro
if want probes && needs_gpu probes; then
  (
    part probes 150 "$PY" bench/gpu_probes.py --device "$DEVICE" --only f1,f2,f3,f7 --out "$OUT/probes.jsonl" --strict
    if [[ $DEVICE == cuda* ]]; then      # F7 under FSDP's bf16 policy: informational (fsdp.yaml is fp32 for this reason)
      part probes_fsdp 90 "$PY" -m accelerate.commands.launch --config_file params/accelerate/fsdp.yaml \
        --num_processes 1 --mixed_precision bf16 --main_process_port 29641 \
        bench/gpu_probes.py --only f7 --out "$WORK/probes_fsdp.jsonl"
    fi
  ) &
fi
if want stages && needs_gpu stages; then
  cat >"$WORK/gpu_micro.yaml" <<EOF
# bench/gpu_check.sh: the micro profile on the GPU, default precision
extends: $REPO/params/micro.yaml
common:
  device: $DEVICE
  precision: auto
EOF
  if have papermill && have nbformat; then
    STAGE_CMD=("$PY" -m lib.pipeline run "$WORK/gpu_micro.yaml" --run $STAGES_RUN --only 00,01,02,03,04,05,06)
  else
    echo "papermill or nbformat missing: notebooks' cells run by bench/gpu_stages.py" >"$WORK/stages_note"
    STAGE_CMD=("$PY" bench/gpu_stages.py run "$WORK/gpu_micro.yaml" --run $STAGES_RUN --only 00,01,02,03,04,05,06)
  fi
  part stages 270 "${STAGE_CMD[@]}" &
  if want qlora; then
    if ! have bitsandbytes; then skip qlora "bitsandbytes not importable (carry its wheel in .whl/)"
    elif [[ $DEVICE != cuda* ]]; then skip qlora "QLoRA needs CUDA"
    else
      cat >"$WORK/gpu_qlora.yaml" <<EOF
extends: $WORK/gpu_micro.yaml
pipeline:
  share: {run: $STAGES_RUN, stages: ["00", "01", "02", "03", "04"]}
05_stage3_pretrain:
  method: qlora
EOF
      # the same runner as the stages part, another profile and run
      if [[ ${STAGE_CMD[1]} == -m ]]; then QLORA_CMD=("$PY" -m lib.pipeline run); else QLORA_CMD=("$PY" bench/gpu_stages.py run); fi
      (   # 05 QLoRA as soon as 04 of the stages run is finished
        DONE04="$KOLLAMA_OUTPUTS/$STAGES_RUN/04_stage2_lm_head/DONE"
        for _ in $(seq 1 200); do [ -f "$DONE04" ] && break; [ "$(left)" -lt 100 ] && break; sleep 2; done
        if [ -f "$DONE04" ]; then
          part qlora 150 "${QLORA_CMD[@]}" "$WORK/gpu_qlora.yaml" --run gpu_qlora --only 05
        else skip qlora "stage 04 of the stages part did not finish"; fi
      ) &
    fi
  fi
elif want qlora; then
  skip qlora "needs the stages part (PARTS has no 'stages', or it cannot run)"
fi
if want kvscore && needs_gpu kvscore; then
  if have lm_eval.models.huggingface; then
    part kvscore 150 "$PY" bench/gpu_probes.py --device "$DEVICE" --only kvscore --out "$WORK/kvscore.jsonl" --strict &
    part eval_vs_lm_eval 240 "$PY" bench/eval_vs_lm_eval.py --quick --cases belebele &
  else
    skip kvscore "lm-eval not importable (carry its wheels in .whl/)"
  fi
fi
wait
[ -f "$WORK/kvscore.jsonl" ] && cat "$WORK/kvscore.jsonl" >>"$OUT/probes.jsonl"
[ -f "$WORK/probes_fsdp.jsonl" ] && sed 's/^{/{"launch": "accelerate fsdp.yaml --mixed_precision bf16", /' \
  "$WORK/probes_fsdp.jsonl" >>"$OUT/probes.jsonl"
if [ -d "$KOLLAMA_OUTPUTS" ]; then
  runs=$(ls -d "$KOLLAMA_OUTPUTS"/gpu_* 2>/dev/null)
  [ -n "$runs" ] && "$PY" bench/gpu_stages.py collect $runs >"$OUT/stages.jsonl" 2>>"$WORK/logs/collect.log"
fi

# ------------------------------------------------------------------ smoke: alone on the GPU
if want smoke && needs_gpu smoke; then
  if [[ $DEVICE == cuda* ]]; then
    # gpu_smoke stops starting cases before the part's box closes, so its table and JSON come out;
    # QLoRA last: the slowest (a 1.3B model built, saved and reloaded in 4 bits) and optional
    cases=05_full,06_lora,03_contrastive
    have bitsandbytes && cases=$cases,05_qlora
    lim=$(($(left) - 15)); ((lim > 270)) && lim=270
    part smoke $lim "$PY" bench/gpu_smoke.py --cases $cases --case-timeout 110 --total-timeout $((lim - 15)) \
      ${PEAK_TFLOPS:+--peak-tflops $PEAK_TFLOPS}
  else
    part smoke 120 "$PY" bench/gpu_smoke.py --tiny --steps 3 --cases 05_full,06_lora
  fi
  cp "$WORK/logs/smoke.log" "$OUT/smoke.txt"
fi

# ------------------------------------------------------------------ summary
for f in "$WORK"/logs/*.log; do
  [ -f "$f" ] || continue
  echo "=================== $(basename "$f" .log)"
  tr '\r' '\n' <"$f" | grep -v '^[[:space:]]*$' | tail -c 25000
done >"$OUT/log.txt"
cat >"$WORK/summary.py" <<'PYEOF'
import json, os, sys
W, O = os.environ["WORK"], os.environ["OUT"]

def lines(path):
    try:
        return [json.loads(x) for x in open(path, encoding="utf-8") if x.strip().startswith("{")]
    except (OSError, ValueError):
        return []

def g(x, spec=".3g"):
    return "-" if x is None else format(x, spec) if isinstance(x, (int, float)) and not isinstance(x, bool) else str(x)

parts = {}
for row in open(f"{W}/parts.tsv", encoding="utf-8"):
    name, status, rc, secs, note = row.rstrip("\n").split("\t")
    parts[name] = {"status": status, "rc": rc, "seconds": int(secs), "note": note, "figures": {}}
try:
    env = json.load(open(f"{W}/env.json"))
except (OSError, ValueError):
    env = {}
if "env" in parts:
    missing = sorted(k for k, v in env.get("packages", {}).items() if str(v).startswith("MISSING"))
    parts["env"]["figures"] = {k: env.get(k) for k in ("device", "capability", "memory_gib", "torch", "cuda_build")}
    parts["env"]["figures"]["missing"] = missing
probes = lines(f"{O}/probes.jsonl")
for r in probes:
    p = r.get("probe")
    where = "probes_fsdp" if r.get("launch") else "kvscore" if p == "kvscore" else "probes"
    if where not in parts or "bench" in r:
        continue
    f = parts[where]["figures"]
    if "error" in r:
        f[p] = f"error: {r['error'][:150]}"
    elif p == "f1":
        f[r["fn"].split(".")[-1]] = (f"sim {r['similarity_dtype']}, |dloss| {g(r['loss_abs_err'])}, "
                                     f"grad rel err {g(r['grad_rel_err'])}, ok {r['ok']}")
    elif p == "f2":
        a, b = r["reference_in_training_precision"], r["reference_plain"]
        f["f2_dpo_step0"] = (f"{r['mixed_precision']}: reward acc {g(a['reward_accuracy'])} margin {g(a['margin'])} "
                             f"(plain fp32 reference: {g(b['reward_accuracy'])} / {g(b['margin'])}), ok {r['ok']}")
    elif p == "f3":
        a, b = r["add_chat_vector"], r["inference_dtype_load_model"]
        f[f"f3_delta_{r['delta_rel']:g}"] = (f"add_chat_vector keeps {g(a['share_kept'])} (saved {a['saved_dtype']}); "
                                             f"{b['dtype']} load_model keeps {g(b['share_kept'])}, ok {r['ok']}")
    elif p == "f7":
        f["f7_inv_freq"] = ", ".join(f"{k} {v.get('dtype')} (angle err {g(v.get('angle_err_at_2047_rad'))} rad)"
                                     for k, v in r.items() if isinstance(v, dict))
    elif p == "kvscore":
        f[r.get("dtype", "kvscore")] = r.get("skipped") or (
            f"max |dll| {g(r['max_abs_ll'])}, greedy agree {g(r['greedy_agree'])}, "
            f"item argmax agree {g(r['item_argmax_agree'])}, ok {r['ok']}")
for p in ("probes", "kvscore"):
    if p in parts:
        bad = [r.get("fn") or r["probe"] for r in probes if r.get("ok") is False and not r.get("launch")
               and (r.get("probe") == "kvscore") == (p == "kvscore")]
        if bad and parts[p]["status"] == "ok":
            parts[p]["status"] = "FAIL"
        if bad:
            parts[p]["figures"]["not_ok"] = bad
stages = lines(f"{O}/stages.jsonl")
for r in stages:
    where = "qlora" if r.get("run") == "gpu_qlora" else "stages"
    if where not in parts or "stage" not in r:
        continue
    s = (f"{'done' if r['done'] else 'NOT DONE'} {g(r.get('seconds'))}s, loss {g(r.get('loss_first'))} -> "
         f"{g(r.get('loss_last'))}, tok/s {g(r.get('tokens_per_second'))}")
    if "ko_ppl_eval_before_training" in r:
        s += (f", ko_ppl before training {g(r['ko_ppl_eval_before_training'], '.6g')} vs step-0 eval "
              f"{g(r.get('ko_ppl_step0_eval'), '.6g')}")
    if "heldout_loss_step0_eval" in r:
        s += (f", held-out loss before {g(r.get('heldout_loss_before'), '.6g')} vs step-0 eval "
              f"{g(r['heldout_loss_step0_eval'], '.6g')}")
    for k in ("ko_ppl_step0_ok", "heldout_loss_step0_ok"):
        if r.get(k) is False and parts[where]["status"] == "ok":
            parts[where]["status"] = "FAIL"
            parts[where]["note"] += f"; {r['stage']}: before-training and step-0 evaluations differ"
    d = r.get("dpo")
    if d:
        s += (f"; DPO step-0 eval reward acc {g(d.get('step0_eval_reward_accuracy'))} margin "
              f"{g(d.get('step0_eval_margin'))}, first loss {g(d.get('loss_first'))} (log 2 = 0.693)")
        if d.get("step0_ok") is False and parts[where]["status"] == "ok":
            parts[where]["status"] = "FAIL"
            parts[where]["note"] += "; DPO step 0 is not 0"
    parts[where]["figures"][r["stage"]] = s
smoke = lines(f"{W}/logs/smoke.log")
if "smoke" in parts and smoke and "cases" in smoke[-1]:
    for c in smoke[-1]["cases"]:
        parts["smoke"]["figures"][c["case"]] = c["error"] if "error" in c else (
            f"{g(c['tokens_per_second'], ',.0f')} tok/s, MFU {g(c.get('mfu'))}, HFU {g(c.get('hfu'))} "
            f"(peak {g(c.get('peak_tflops'))} TFLOP/s), peak {g((c.get('peak_bytes') or 0) / 2**30, '.1f')} GiB "
            f"vs plan {g(c['estimated_bytes'] / 2**30, '.1f')} GiB")
        if "error" in c and parts["smoke"]["status"] == "ok":
            parts["smoke"]["status"] = "FAIL"
ev = lines(f"{W}/logs/eval_vs_lm_eval.log")
if "eval_vs_lm_eval" in parts and ev:
    parts["eval_vs_lm_eval"]["figures"] = {k: ev[-1].get(k) for k in ("ratio_items_per_s", "same_items", "same_acc")}
note = None
if os.path.exists(f"{W}/stages_note"):
    note = open(f"{W}/stages_note").read().strip()
    if "stages" in parts:
        parts["stages"]["note"] += f"; {note}"
summary = {"check": "bench/gpu_check.sh", "device": env.get("device") or os.environ.get("DEVICE"),
           "total_seconds": int(sys.argv[1]), "budget_seconds": int(os.environ["BUDGET"]), "parts": parts,
           "all_ok": all(p["status"] in ("ok", "SKIP") for p in parts.values())}
json.dump(summary, open(f"{O}/summary.json", "w"), indent=1, default=str)
with open(f"{O}/summary.txt", "w") as f:
    f.write(f"kollama GPU check: {summary['device']}, torch {env.get('torch', '?')} (CUDA {env.get('cuda_build', '?')}), "
            f"{summary['total_seconds']}s of {summary['budget_seconds']}s\n")
    for name, p in parts.items():
        f.write(f"{name:16s} {p['status']:7s} {p['seconds']:4d}s  {p['note']}\n")
        for k, v in p["figures"].items():
            f.write(f"    {k}: {v}\n")
print(open(f"{O}/summary.txt").read())
PYEOF
if [ -n "$PY" ]; then
  WORK="$WORK" OUT="$OUT" BUDGET="$BUDGET" DEVICE="$DEVICE" "$PY" "$WORK/summary.py" $(($(date +%s) - T0)) \
    || echo "summary failed: see $WORK/parts.tsv" >>"$OUT/summary.txt"
else
  cp "$WORK/parts.tsv" "$OUT/summary.txt"
  echo '{"check": "bench/gpu_check.sh", "error": "no python that imports torch"}' >"$OUT/summary.json"
fi
echo "[gpu_check] $(($(date +%s) - T0))s; results in $OUT"
