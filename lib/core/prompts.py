"""The question-answer prompt of the whole project, in both languages: the Korean evaluation
harness's ``Question: ...\\nAnswer:`` / ``질문: ...\\n정답:``. The toy world writes its QA in it, packing
keeps a question and its answer in one document by it, the toy base model is scored with it, and
07's ARC-shaped tasks use the same words.

    QA_PROMPTS["ko"].format(q="민수는 어디에 사나요?")   # '질문: 민수는 어디에 사나요?\\n정답:'
"""
from __future__ import annotations

QA_PROMPTS = {"en": "Question: {q}\nAnswer:", "ko": "질문: {q}\n정답:"}
# how a question line and its answer line start, per language
QA_STARTS = {lang: p.split("{q}")[0] for lang, p in QA_PROMPTS.items()}
ANSWER_STARTS = {lang: p.split("\n")[1] + " " for lang, p in QA_PROMPTS.items()}
QA_MARKERS = tuple((QA_STARTS[lang], ANSWER_STARTS[lang]) for lang in QA_PROMPTS)
