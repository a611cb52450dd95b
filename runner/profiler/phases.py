"""The routing phases, named once (torch-free: the report and the app read them without importing torch).

PREFILL: the scoring forward passes; DECODE: the generated tokens; PROMPT: generate()'s own pass over the prompt,
which repeats the prefill phase's tokens and is left out of the tables; EVAL: the lm-eval task passes of a job
(`eval=lm_eval`). A profiler records under any label; these are the ones the library and the app use.
"""

PREFILL, DECODE, PROMPT, EVAL = "prefill", "decode", "prompt", "eval"
PHASES = (PREFILL, DECODE, PROMPT)  # what evaluate() records; a job adds EVAL when it runs tasks
DEFAULT_PHASES = (PREFILL, DECODE)  # preallocated by a profiler built without a phases argument
