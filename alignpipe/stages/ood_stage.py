"""Out-of-distribution test: the policies on CNN/DailyMail articles (the paper's Table 1).

Summarization presets prompt in the TL;DR format with the article as the post and judge against the
reference highlights with the (C) "news article" prompt. The sentiment demo prompts with article
openings and reports win rate vs SFT and mean reward, since movie-review policies do not summarize.
"""
from __future__ import annotations

from alignpipe.data import ood_articles
from alignpipe.report import PAPER_TABLE1
from alignpipe.stages.base import StageContext, StageSpec
from alignpipe.stages.evaluate_stage import EVAL_ARTIFACTS, judge_and_tabulate, write_tables
from alignpipe.stages.pairs_stage import SENTIMENT_TASKS

TLDR_TEMPLATE = "SUBREDDIT: r/news\n\nTITLE: {title}\n\nPOST: {post}\n\nTL;DR:"


def config_slice(cfg) -> dict:
    return {
        "ood": cfg.ood.model_dump(),
        "task": cfg.data.task,
        "data_dir": cfg.data.dir,
        "builtin_fallback": cfg.data.builtin_fallback,
        "dtype": cfg.model.dtype,
        "seed": cfg.seed,
    }


def ood_prompt(task: str, article: str, article_chars) -> str:
    text = article[:article_chars].rsplit(" ", 1)[0] if article_chars and len(article) > article_chars else article
    if task in SENTIMENT_TASKS:
        return text
    first_sentence = text.split(". ")[0][:120]
    return TLDR_TEMPLATE.format(title=first_sentence, post=text)


def run(ctx: StageContext) -> dict[str, float]:
    cfg, ocfg = ctx.cfg, ctx.cfg.ood
    articles = ood_articles(cfg.data.dir, ocfg.n_articles, builtin_fallback=cfg.data.builtin_fallback)
    prompts = [{"prompt": ood_prompt(cfg.data.task, a["article"], ocfg.article_chars), "reference": " " + a["highlights"].replace("\n", " ")} for a in articles]
    tables = judge_and_tabulate(
        ctx, prompts, temperatures=ocfg.temperatures, baselines=[ocfg.baseline], generation=ocfg.generation, judge_cfg=ocfg.judge
    )
    for row in tables.win_rates:  # the paper's Table 1 beside ours, for the same temperature
        for method, by_t in PAPER_TABLE1.items():
            if row["temperature"] in by_t:
                row[f"paper_{method.lower()}"] = by_t[row["temperature"]]
    return write_tables(ctx, tables)


SPEC = StageSpec(
    name="ood",
    upstream=("sft", "dpo"),
    version="1",
    config_slice=config_slice,
    run=run,
    artifacts=EVAL_ARTIFACTS,
    uses_gpu=True,
)
