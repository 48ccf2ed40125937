"""Offline check of the trained tiny model: the tool benchmark's requests sampled as vLLM samples them.

    .venv/bin/python perf/tiny_model_eval.py                      # the cached default model, 8 samples each
    .venv/bin/python perf/tiny_model_eval.py --model DIR --samples 16 --show-failures

No server: transformers runs the model (bf16, 2 threads) and xgrammar applies the structural tag that
vLLM 0.32 builds for the hermes tool parser (`get_model_structural_tag`, strict tools), from the token
after `</think>` on, as vLLM's reasoning gate does with `--reasoning-parser qwen3`. Each of the 12
scenario x tool_choice cases of benchmarks/test_tool_calling.py is sampled at temperature 1 (the
benchmark's default) and classified with workloads.classify_tool_call after the hermes parsing of
what follows `</think>`; the reasoning tasks of benchmarks/test_reasoning.py are decoded greedily and
split at `</think>`. Printed: success per case, generated tokens, the failures' reasons (and texts).

It predicts the served benchmark, it does not replace it: vLLM's own sampling, detokenisation and
parsers decide there (run `pytest benchmarks/test_tool_calling.py -k baseline`).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pytest_vllmgrid import tinymodel  # noqa: E402
from pytest_vllmgrid.workloads import TOOL_SCENARIOS, ToolScenario, classify_tool_call, reasoning_tasks  # noqa: E402

CHOICES = ("auto", "required", "named")


def hermes_calls(content: str) -> list[dict[str, Any]]:
    """vLLM's hermes extraction: every <tool_call> JSON (an unterminated last one too); any bad JSON loses all."""
    calls = []
    for closed, open_ended in re.findall(r"<tool_call>(.*?)</tool_call>|<tool_call>(.*)", content, re.DOTALL):
        try:
            call = json.loads(closed or open_ended)
            calls.append({"function": {"name": call["name"], "arguments": json.dumps(call["arguments"])}})
        except (ValueError, KeyError, TypeError):
            return []
    return calls


class Sampler:
    """The model, its tokenizer and a grammar compiler over its vocabulary."""

    def __init__(self, model_dir: Path, seed: int) -> None:
        import torch
        import xgrammar
        from transformers import AutoModelForCausalLM, AutoTokenizer

        torch.set_num_threads(2)
        torch.manual_seed(seed)
        self.torch, self.xgr = torch, xgrammar
        self.tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        self.model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.bfloat16).eval()
        self.vocab_size = self.model.config.vocab_size
        self.stops = [self.tokenizer.convert_tokens_to_ids(tinymodel.IM_END), self.tokenizer.eos_token_id]
        self.think_end = self.tokenizer.convert_tokens_to_ids("</think>")
        info = xgrammar.TokenizerInfo.from_huggingface(self.tokenizer, vocab_size=self.vocab_size)
        self.compiler = xgrammar.GrammarCompiler(info)

    def grammar(self, scenario: ToolScenario, choice: str) -> Any:
        """The compiled structural tag vLLM applies to this request."""
        from vllm.entrypoints.openai.chat_completion.protocol import (
            ChatCompletionNamedToolChoiceParam,
            ChatCompletionToolsParam,
        )
        from vllm.tool_parsers.structural_tag_registry import get_model_structural_tag

        tools = [ChatCompletionToolsParam.model_validate(tool) for tool in tinymodel.strict_tools(scenario.tools)]
        tool_choice: Any = choice
        if choice == "named":
            tool_choice = ChatCompletionNamedToolChoiceParam.model_validate(
                {"type": "function", "function": {"name": scenario.expected_function}})
        tag = get_model_structural_tag(model="hermes", tools=tools, tool_choice=tool_choice, reasoning=False)
        return self.compiler.compile_structural_tag(json.dumps(tag.model_dump()))

    def generate(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None, grammar: Any,
                 temperature: float, max_tokens: int) -> list[int]:
        """Decode up to max_tokens; the grammar (if any) masks every token after </think>."""
        torch, xgr = self.torch, self.xgr
        matcher = xgr.GrammarMatcher(grammar, override_stop_tokens=self.stops) if grammar is not None else None
        bitmask = xgr.allocate_token_bitmask(1, self.vocab_size)
        inputs = self.tokenizer.apply_chat_template(messages, tools=tools, add_generation_prompt=True,
                                                    return_tensors="pt", return_dict=True)
        step, past, out, gated = inputs["input_ids"], None, [], False
        with torch.no_grad():
            for _ in range(max_tokens):
                result = self.model(input_ids=step, past_key_values=past, use_cache=True)
                past, logits = result.past_key_values, result.logits[0, -1].float()
                if gated:
                    matcher.fill_next_token_bitmask(bitmask)
                    xgr.apply_token_bitmask_inplace(logits[None], bitmask)
                if temperature == 0:
                    token = int(logits.argmax())
                else:
                    token = int(torch.multinomial(torch.softmax(logits / temperature, -1), 1))
                out.append(token)
                if token in self.stops:
                    break
                if gated and not matcher.accept_token(token):
                    raise RuntimeError(f"the grammar refused token {token} it allowed")
                gated = gated or (matcher is not None and token == self.think_end)
                step = torch.tensor([[token]])
        return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=None, help="model directory (default: the cached tiny model)")
    parser.add_argument("--samples", type=int, default=8, help="samples per scenario x tool_choice (default 8)")
    parser.add_argument("--max-tokens", type=int, default=192, help="the grid's tool_max_tokens (default 192)")
    parser.add_argument("--temperature", type=float, default=1.0, help="the benchmark's tool_temperature")
    parser.add_argument("--reasoning", type=int, default=4, help="reasoning tasks to decode greedily")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--show-failures", action="store_true")
    args = parser.parse_args(argv)
    model_dir = args.model or tinymodel.ensure_tiny_model()
    sampler = Sampler(model_dir, args.seed)
    started, rates = time.perf_counter(), []
    for name, scenario in TOOL_SCENARIOS.items():
        tools = tinymodel.strict_tools(scenario.tools)
        for choice in CHOICES:
            grammar = sampler.grammar(scenario, choice)
            outcomes, lengths, failures = [], [], []
            for _ in range(args.samples):
                ids = sampler.generate(scenario.messages, tools, grammar, args.temperature, args.max_tokens)
                text = sampler.tokenizer.decode(ids, skip_special_tokens=True)
                content = text.split("</think>", 1)[1] if "</think>" in text else ""
                outcome = classify_tool_call(hermes_calls(content), scenario.tools, scenario.expected_function)
                outcomes.append(outcome or "success")
                lengths.append(len(ids))
                if outcome:
                    failures.append(text)
            rate = outcomes.count("success") / len(outcomes)
            rates.append(rate)
            print(f"{name:15s} {choice:8s} {100 * rate:5.1f} %  tokens {min(lengths)}-{max(lengths)}  "
                  f"failures {[o for o in outcomes if o != 'success']}")
            for text in failures if args.show_failures else []:
                print(f"    {text!r}")
    print(f"tool calling: mean {100 * sum(rates) / len(rates):.1f} %, lowest {100 * min(rates):.1f} % "
          f"({time.perf_counter() - started:.0f} s)")
    for task in reasoning_tasks(args.reasoning, seed=args.seed):
        ids = sampler.generate([{"role": "user", "content": task}], None, None, 0.0, 128)
        text = sampler.tokenizer.decode(ids, skip_special_tokens=True)
        reasoning, _, answer = text.partition("</think>")
        print(f"reasoning: {len(ids)} tokens, stopped {ids[-1] in sampler.stops}, answer {answer.strip()!r}")


if __name__ == "__main__":
    main()
