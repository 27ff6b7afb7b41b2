"""Sample text from a trained run: python sample.py RUN_DIR [--prompt TEXT] [--temperature T] ..."""

import sys

from gptjax import errors


def main(argv: list[str]) -> int:
    parser = errors.ArgumentParser(description=__doc__)
    parser.add_argument("run_dir", help="a run directory written by train.py")
    parser.add_argument("--prompt", default="", help="text to continue (default: start of a new document)")
    parser.add_argument("--max-new-tokens", type=int, default=500, help="tokens to generate per sample")
    parser.add_argument("--temperature", type=float, default=0.8, help="softmax temperature; 0 is greedy")
    parser.add_argument("--top-k", type=int, default=None, help="sample only from the k most likely tokens")
    parser.add_argument("--top-p", type=float, default=1.0, help="sample only from the smallest set with this mass")
    parser.add_argument("--num-samples", type=int, default=1, help="independent samples to print")
    parser.add_argument("--seed", type=int, default=0, help="same seed, same text")
    parser.add_argument("--window", choices=("exact", "shift"), default="exact",
                        help="past n_ctx: exact recomputes the window per token; shift (approximate, faster) "
                             "re-encodes the newest half and keeps caching")
    parser.add_argument("--step", default="latest", help="checkpoint to use: latest, best, or a step number")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    args = parser.parse_args(argv)

    def run():
        from gptjax import runs, sampling

        # Flags and prompt are checked against the run's tokenizer before any weights load.
        _, tok = runs.read_files(args.run_dir)
        sampling.check_options(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                               max_new_tokens=args.max_new_tokens, num_samples=args.num_samples,
                               vocab_size=tok.vocab_size)
        prompt = tok.encode(args.prompt) if args.prompt else tok.bos_ids
        run = runs.load(args.run_dir, args.step)
        samples = sampling.generate(
            run.graphdef, run.params, run.cfg.model, prompt, max_new_tokens=args.max_new_tokens,
            num_samples=args.num_samples, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
            seed=args.seed, vocab_size=tok.vocab_size, stop_id=tok.eot_id, window=args.window)
        for i, new in enumerate(samples):
            if i:
                print("-" * 40)
            print(args.prompt + tok.decode(new))

    return errors.run_cli(run, debug=args.debug)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
