"""The commands that each run a harness of their own (mega-chunk, compile, decode-batch, long-stream): their settings
by command name, whose fields are the command's options (settings.py), and their run. Free of torch until a harness
runs, for `ssmlm-bench COMMAND --help`."""

from .settings import BatchedSettings, CompileSettings, LongStreamSettings, MegaChunkSettings

HARNESSES = {
    "mega-chunk": MegaChunkSettings,
    "compile": CompileSettings,
    "decode-batch": BatchedSettings,
    "long-stream": LongStreamSettings,
}


def run_harness(command: str, settings) -> tuple[dict, str]:
    """The result of a harness and its markdown."""
    from . import batched, compiled, long_stream, mega_chunk

    run, to_markdown = {
        "mega-chunk": (mega_chunk.run_mega_chunk, mega_chunk.to_markdown),
        "compile": (compiled.run_compile_benchmark, compiled.to_markdown),
        "decode-batch": (batched.run_batched_decoding, batched.to_markdown),
        "long-stream": (long_stream.run_long_stream, long_stream.to_markdown),
    }[command]
    result = run(settings)
    return result, to_markdown(result)
