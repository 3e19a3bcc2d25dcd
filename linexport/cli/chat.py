"""`linexport chat`: a multi-turn REPL over one sequence whose state carries the conversation.

Each turn is appended to the live sequence by one continued prefill (``append_tokens``), so a
turn costs what its own tokens cost, however long the conversation already is; the reply is
streamed until ``--stop`` appears or ``--max-new-tokens`` are out. ``/save FILE`` writes the
sequence's state (O(state), not O(conversation)) and ``/load FILE`` continues from one.
"""

from pathlib import Path

import click

from linexport.cli.common import backend_options, resolve_device

HELP = ("commands: /reset (forget the conversation), /save FILE, /load FILE (the state, as a file), "
        "/quit; anything else is your next turn")


@click.command("chat")
@click.argument("out", type=click.Path(path_type=Path), default=Path("linexport-out"))
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=200, show_default=True,
              help="The longest reply.")
@click.option("--stop", default="\n\n", show_default=True, help="A reply ends where this text appears.")
@click.option("--temperature", type=click.FloatRange(min=0.0), default=0.8, show_default=True,
              help="0 means greedy.")
@click.option("--top-k", type=click.IntRange(min=0), default=0, help="0 disables top-k.")
@click.option("--seed", type=int, default=None, help="Seed for reproducible sampling.")
@backend_options
def command(out, max_new_tokens, stop, temperature, top_k, seed, backend, device):
    """Chat with the model exported in OUT: each line you type is appended to the conversation's
    state and the model's reply streamed after it."""
    from linexport.errors import LinexportError
    from linexport.runtime import Generator, Model, SamplingParams
    from linexport.runtime.snapshot_file import load_snapshot, save_snapshot

    model = Model(out, backend=backend, device=resolve_device(backend, device))
    gen = Generator(model, max_batch=1)
    # The sequence never finishes on its own (the budget is per reply, counted here).
    params = SamplingParams(max_new_tokens=1 << 62, temperature=temperature, top_k=top_k, seed=seed)
    seq = None
    click.echo(HELP, err=True)
    while True:
        try:
            line = click.prompt("you", prompt_suffix="> ", default="", show_default=False)
        except (EOFError, click.Abort):
            click.echo(err=True)
            return
        word, _, arg = line.strip().partition(" ")
        try:
            if word == "/quit":
                return
            if word == "/reset":
                if seq is not None:
                    gen.remove(seq)
                seq = None
                click.echo("(conversation forgotten)", err=True)
            elif word in ("/save", "/load"):
                if not arg:
                    raise LinexportError(f"usage: {word} FILE")
                if word == "/save":
                    if seq is None:
                        raise LinexportError("nothing to save yet: say something first")
                    save_snapshot(arg, gen.snapshot(seq), model)
                    click.echo(f"(saved {seq.position} tokens of conversation to {arg})", err=True)
                else:
                    snap = load_snapshot(arg, model, params)
                    if seq is not None:
                        gen.remove(seq)
                    seq = gen.restore(snap)
                    click.echo(f"(loaded {seq.position} tokens of conversation from {arg})", err=True)
            elif word.startswith("/"):
                click.echo(HELP, err=True)
            else:
                text = line + "\n"
                if seq is None:
                    seq = gen.add(text, params)
                else:
                    gen.append_tokens(seq, text)
                seq = _reply(gen, seq, max_new_tokens, stop)
        except LinexportError as e:
            click.secho(f"error: {e}", fg="red", err=True)


def _reply(gen, seq, max_new_tokens: int, stop: str):
    """Streams the reply; returns the sequence (None if it ran out of positions and ended)."""
    decode = gen.model.tokenizer.stream_decoder()
    text = ""
    for _ in range(max_new_tokens):
        for _, token in gen.step():
            piece = decode(token)
            click.echo(piece, nl=False)
            text += piece
        if seq.done:
            click.echo("\n(the model has no positions left: /reset to start again)", err=True)
            return None
        if stop and stop in text:
            break
    if not text.endswith("\n"):
        click.echo()
    return seq
