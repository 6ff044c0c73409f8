"""Markdown tables, as the reports and the benchmark write them."""


def markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    """The lines of a table, and an empty line after it."""
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(row) + " |" for row in rows), ""]
