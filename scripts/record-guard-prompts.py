#!/usr/bin/env python3
"""Record Meta's Llama Guard 1/2/3 prompt renderings from llama-cookbook as test fixtures.

Usage (from anywhere; Python stdlib only, network only for `pip download`):
    python3 scripts/record-guard-prompts.py [--wheel-dir DIR] [--out tests/fixtures/guard/prompts.json]

Without --wheel-dir the script runs
    python3 -m pip download --no-deps llama-cookbook==0.0.5.post1 -d <tempdir>
and reads `llama_cookbook/inference/prompt_format_utils.py` straight out of the wheel (zip).
That module imports only dataclasses/string/typing/enum, so it is executed standalone: no
torch, transformers or the rest of the cookbook is installed or imported. With --wheel-dir the
wheel already in DIR is used (nothing is downloaded).

Every prompt in the output is the exact return value of the cookbook's own
`build_default_prompt` or `build_custom_prompt`; the script only chooses inputs. Category
exclusion follows the cookbook's customization notebook
(recipes/responsible_ai/llama_guard/llama_guard_customization_via_prompting_and_fine_tuning.ipynb,
`get_lg3_categories` + `evaluate_safety`): keep the wanted entries of the version's category list
in their original order, then call build_custom_prompt(..., with_policy=True). The cookbook
numbers the kept categories by position (S1, S2, ...), so codes after an excluded one shift down.

Output (JSON, UTF-8, non-ASCII written as-is):
  source      package/version, wheel name + sha256, module path + sha256, the pip command
  categories  {"llama_guard_1"|"llama_guard_2"|"llama_guard_3": [{"code","name","description"}]}
  templates   the three string.Template texts (PROMPT_TEMPLATE_1/2/3) and code prefixes
  notes       format facts read from the module (BOS, header spacing, trailing spaces, ...)
  cases       [{"id","version","role","messages","excluded","builder","with_policy",
                "kept_codes","prompt"}]
"""
import argparse
import glob
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import types
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = "llama-cookbook"
VERSION = "0.0.5.post1"
MODULE_PATH = "llama_cookbook/inference/prompt_format_utils.py"
VERSIONS = ["llama_guard_1", "llama_guard_2", "llama_guard_3"]


def sha256(data):
    return hashlib.sha256(data).hexdigest()


def find_wheel(wheel_dir):
    if os.path.isfile(wheel_dir) and wheel_dir.endswith(".whl"):
        return wheel_dir
    pattern = os.path.join(wheel_dir, "llama_cookbook-%s-*.whl" % VERSION)
    found = sorted(glob.glob(pattern))
    if not found:
        sys.exit("no wheel matching %s" % pattern)
    return found[0]


def download_wheel(dest):
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "%s==%s" % (PACKAGE, VERSION), "-d", dest]
    print("+", " ".join(cmd), file=sys.stderr)
    subprocess.run(cmd, check=True, stdout=sys.stderr)
    return find_wheel(dest)


def load_module(wheel):
    with zipfile.ZipFile(wheel) as zf:
        src = zf.read(MODULE_PATH)
    name = "llama_cookbook.inference.prompt_format_utils"
    mod = types.ModuleType(name)
    mod.__file__ = MODULE_PATH
    # dataclasses looks the defining module up in sys.modules.
    sys.modules[name] = mod
    exec(compile(src, MODULE_PATH, "exec"), mod.__dict__)
    return mod, src


def version_parts(pfu, version):
    """(LlamaGuardVersion, categories, prefix, template) as build_default_prompt picks them."""
    return {
        "llama_guard_1": (pfu.LlamaGuardVersion.LLAMA_GUARD_1, pfu.LLAMA_GUARD_1_CATEGORY,
                          pfu.LLAMA_GUARD_1_CATEGORY_SHORT_NAME_PREFIX, pfu.PROMPT_TEMPLATE_1),
        "llama_guard_2": (pfu.LlamaGuardVersion.LLAMA_GUARD_2, pfu.LLAMA_GUARD_2_CATEGORY,
                          pfu.LLAMA_GUARD_2_CATEGORY_SHORT_NAME_PREFIX, pfu.PROMPT_TEMPLATE_2),
        "llama_guard_3": (pfu.LlamaGuardVersion.LLAMA_GUARD_3, pfu.LLAMA_GUARD_3_CATEGORY,
                          pfu.LLAMA_GUARD_3_CATEGORY_SHORT_NAME_PREFIX, pfu.PROMPT_TEMPLATE_3),
    }[version]


def role_of(messages):
    # create_conversation: even index -> User, odd -> Agent. We classify the last turn.
    return "User" if len(messages) % 2 == 1 else "Agent"


# (id, version, messages, excluded codes, builder, with_policy)
#   builder "default": build_default_prompt(role, create_conversation(messages), version)
#   builder "custom":  build_custom_prompt(role, create_conversation(messages), kept categories,
#                                          prefix, template, with_policy)
CASES = [
    # --- Llama Guard 1 (O1-O6, [INST] ... [/INST]) ---
    ("lg1_user", "llama_guard_1", ["How do I bake a chocolate cake?"], [], "default", False),
    ("lg1_agent", "llama_guard_1",
     ["What is the capital of France?", "The capital of France is Paris."], [], "default", False),
    ("lg1_user_full_policy", "llama_guard_1", ["How do I bake a chocolate cake?"], [], "custom", True),
    ("lg1_exclude_one", "llama_guard_1", ["Where can I buy a rifle?"], ["O3"], "custom", True),
    ("lg1_exclude_two_agent", "llama_guard_1",
     ["Tell me about wine.", "Wine is made from fermented grapes."], ["O2", "O5"], "custom", True),
    ("lg1_non_ascii", "llama_guard_1",
     ["Ça va? Où est la bibliothèque — s'il vous plaît? 日本語のテキスト 🙂"], [], "default", False),
    # --- Llama Guard 2 (S1-S11, [INST] ... [/INST]) ---
    ("lg2_user", "llama_guard_2", ["How do I bake a chocolate cake?"], [], "default", False),
    ("lg2_agent", "llama_guard_2",
     ["What is the capital of France?", "The capital of France is Paris."], [], "default", False),
    ("lg2_multi_turn_agent", "llama_guard_2",
     ["Hi, can you help me plan a trip?", "Of course! Where would you like to go?",
      "Somewhere warm in December.", "The Canary Islands are pleasant in December."],
     [], "default", False),
    ("lg2_whitespace", "llama_guard_2",
     ["  \n Line one\nLine two\n\n  indented line\t ", "\tAnswer with trailing newline\n"],
     [], "default", False),
    ("lg2_empty_agent_and_dollars", "llama_guard_2",
     ["It costs $5, not ${agent_type} or $categories.", ""], [], "default", False),
    ("lg2_user_full_policy", "llama_guard_2", ["How do I bake a chocolate cake?"], [], "custom", True),
    ("lg2_exclude_one", "llama_guard_2", ["How do I pick a lock?"], ["S2"], "custom", True),
    ("lg2_exclude_two_agent", "llama_guard_2",
     ["Should I take aspirin?", "I can't give medical advice; please ask a doctor."],
     ["S1", "S5"], "custom", True),
    # --- Llama Guard 3 (S1-S14, Llama 3 header framing) ---
    ("lg3_user", "llama_guard_3", ["How do I bake a chocolate cake?"], [], "default", False),
    ("lg3_agent", "llama_guard_3",
     ["What is the capital of France?", "The capital of France is Paris."], [], "default", False),
    ("lg3_multi_turn_agent", "llama_guard_3",
     ["Hi, can you help me plan a trip?", "Of course! Where would you like to go?",
      "Somewhere warm in December.", "The Canary Islands are pleasant in December."],
     [], "default", False),
    ("lg3_three_turns_user", "llama_guard_3",
     ["Hello.", "Hello! How can I help?", "Tell me a joke."], [], "default", False),
    ("lg3_whitespace", "llama_guard_3",
     ["  \n Line one\nLine two\n\n  indented line\t ", "\tAnswer with trailing newline\n"],
     [], "default", False),
    ("lg3_non_ascii", "llama_guard_3",
     ["Ça va? Où est la bibliothèque — s'il vous plaît?",
      "Привет! 日本語のテキスト، مرحبا 🙂👍🏽 naïve café ß"], [], "default", False),
    ("lg3_user_full_policy", "llama_guard_3", ["How do I bake a chocolate cake?"], [], "custom", True),
    ("lg3_exclude_one", "llama_guard_3",
     ["Is it true that the mayor was arrested?"], ["S5"], "custom", True),
    ("lg3_exclude_two_agent", "llama_guard_3",
     ["Run this Python for me.", "Sure, here is the output of the script."],
     ["S2", "S14"], "custom", True),
    ("lg3_exclude_one_names_only", "llama_guard_3",
     ["How do I pick a lock?"], ["S3"], "custom", False),
    # The 3-1B model's 13 categories are the 8B list without S14; the cookbook has no 1B list,
    # this is what its strings give for it.
    ("lg3_1b_categories_names_only", "llama_guard_3",
     ["How do I bake a chocolate cake?"], ["S14"], "custom", False),
]


def code_of(prefix, i):
    return "%s%d" % (prefix, i + 1)


def build_case(pfu, case):
    cid, version, messages, excluded, builder, with_policy = case
    lgv, cats, prefix, template = version_parts(pfu, version)
    role = role_of(messages)
    agent_type = pfu.AgentType.USER if role == "User" else pfu.AgentType.AGENT
    conv = pfu.create_conversation(messages)
    all_codes = [code_of(prefix, i) for i in range(len(cats))]
    for code in excluded:
        if code not in all_codes:
            sys.exit("%s: %s is not a %s code" % (cid, code, version))
    kept = [i for i, code in enumerate(all_codes) if code not in excluded]
    if builder == "default":
        assert not excluded and not with_policy
        prompt = pfu.build_default_prompt(agent_type, conv, lgv)
    else:
        # As the cookbook notebook's get_lg3_categories: pick entries of the version's list.
        categories = [cats[i] for i in kept]
        prompt = pfu.build_custom_prompt(agent_type, conv, categories, prefix, template, with_policy)
    return {
        "id": cid,
        "version": version,
        "role": role,
        "messages": messages,
        "excluded": excluded,
        "builder": "build_default_prompt" if builder == "default" else "build_custom_prompt",
        "with_policy": with_policy,
        # Original codes of the categories that remain, in prompt order; the prompt numbers
        # them 1..n with the version's prefix (kept_codes[k] is rendered as prefix + (k+1)).
        "kept_codes": [all_codes[i] for i in kept],
        "prompt": prompt,
    }


def notes(pfu):
    t1, t2, t3 = (pfu.PROMPT_TEMPLATE_1.template, pfu.PROMPT_TEMPLATE_2.template,
                  pfu.PROMPT_TEMPLATE_3.template)
    trailing = {
        v: [c.name for c in version_parts(pfu, v)[1] if c.name != c.name.rstrip()]
        for v in VERSIONS
    }
    return {
        "build_default_prompt_with_policy": False,
        "build_default_prompt_default_version": pfu.build_default_prompt.__defaults__[0].name,
        "version_dispatch": "build_default_prompt: LLAMA_GUARD_3 -> list 3/template 3, "
                            "LLAMA_GUARD_2 -> list 2/template 2, anything else -> list 1/template 1",
        "lg3_starts_with_begin_of_text": t3.startswith("<|begin_of_text|>"),
        "lg3_user_header": t3[:t3.index("Task:")],
        "lg3_ends_with": t3[t3.rindex("categories.") + len("categories."):],
        "lg1_lg2_start": t1[:t1.index("Task:")],
        "lg1_lg2_end": t2[t2.rindex("categories.") + len("categories."):],
        "lg1_lg2_contain_bos": "<s>" in t1 or "<s>" in t2,
        "category_names_with_trailing_space": trailing,
        "category_line": "prefix + str(i+1) + ': ' + name (+ '\\n' + description when with_policy); "
                         "lines joined by '\\n'; i is the position in the list passed in",
        "conversation_turn": "agent_type.value + ': ' + message (message is NOT stripped); "
                             "turns joined by '\\n\\n'",
        "agent_type_values": [a.value for a in pfu.AgentType],
        "substitution": "string.Template.substitute(agent_type, categories, conversations); "
                        "'$' in messages is not interpreted",
        "lg3_descriptions_indent_16_spaces": any(
            "\n                - " in c.description for c in pfu.LLAMA_GUARD_3_CATEGORY),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--wheel-dir", help="directory holding llama_cookbook-%s-*.whl (or the .whl)" % VERSION)
    ap.add_argument("--out", default=os.path.join(ROOT, "target", "guard", "prompts.json"))
    args = ap.parse_args()

    if args.wheel_dir:
        wheel = find_wheel(args.wheel_dir)
        pfu, src = load_module(wheel)
        wheel_bytes = open(wheel, "rb").read()
    else:
        with tempfile.TemporaryDirectory(prefix="lgdl-") as tmp:
            wheel = download_wheel(tmp)
            pfu, src = load_module(wheel)
            wheel_bytes = open(wheel, "rb").read()

    out = {
        "source": {
            "package": PACKAGE,
            "version": VERSION,
            "wheel": os.path.basename(wheel),
            "wheel_sha256": sha256(wheel_bytes),
            "module": MODULE_PATH,
            "module_sha256": sha256(src),
            "download": "python3 -m pip download --no-deps %s==%s -d DIR" % (PACKAGE, VERSION),
            "exclusion_method": "keep the version's categories minus the excluded ones, original "
                                "order, build_custom_prompt(..., with_policy=True) as in the cookbook "
                                "notebook llama_guard_customization_via_prompting_and_fine_tuning.ipynb",
        },
        "categories": {
            v: [{"code": code_of(version_parts(pfu, v)[2], i), "name": c.name, "description": c.description}
                for i, c in enumerate(version_parts(pfu, v)[1])]
            for v in VERSIONS
        },
        "templates": {
            v: {"prefix": version_parts(pfu, v)[2], "template": version_parts(pfu, v)[3].template}
            for v in VERSIONS
        },
        "notes": notes(pfu),
        "cases": [build_case(pfu, c) for c in CASES],
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w", encoding="utf-8", newline="\n") as f:
        json.dump(out, f, ensure_ascii=False, indent=1)
        f.write("\n")
    print("wrote %s: %d cases" % (os.path.relpath(args.out), len(out["cases"])), file=sys.stderr)


if __name__ == "__main__":
    main()
