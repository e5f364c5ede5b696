from searchrl.world import generate_world, split_questions, write_world


def test_same_seed_same_world_other_seed_other_world(tmp_path):
    a, b, c = (
        generate_world(3, n_people=120),
        generate_world(3, n_people=120),
        generate_world(4, n_people=120),
    )
    assert a.passages == b.passages and [q.question for q in a.questions] == [q.question for q in b.questions]
    assert a.passages != c.passages
    pa = write_world(tmp_path / "a", a, 3, 30)
    pb = write_world(tmp_path / "b", b, 3, 30)
    for key in pa:
        assert pa[key].read_bytes() == pb[key].read_bytes()


def test_single_hop_answers_are_stated_in_the_subject_passage():
    w = generate_world(0, n_people=120)
    text_by_title = {p["title"]: p["text"] for p in w.passages}
    checked = 0
    for q in w.questions:
        if q.type != "single_hop":
            continue
        subject = next(t for t in text_by_title if t in q.question)
        assert q.answer in text_by_title[subject], q
        checked += 1
    assert checked > 100


def test_two_hop_needs_two_passages_and_splits_are_disjoint():
    w = generate_world(0, n_people=120)
    text_by_title = {p["title"]: p["text"] for p in w.passages}
    for q in [q for q in w.questions if q.type == "two_hop"][:50]:
        subject = max((t for t in text_by_title if t in q.question), key=len)
        assert q.answer not in text_by_title[subject]  # the subject's own passage does not state the answer
    splits = split_questions(w, 0, n_test=30)
    test = {q.question for q in splits["test"]}
    assert {q.type for q in splits["test"]} == {"single_hop", "two_hop", "comparison"}
    assert not test & {q.question for q in splits["stage1"] + splits["stage2"]}
    assert {q.type for q in splits["stage1"]} == {"single_hop"}


def test_eval_limit_spreads_over_question_types():
    from searchrl.evaluate import spread

    w = generate_world(0, n_people=120)
    test = split_questions(w, 0, n_test=30)["test"]  # written grouped by type
    picked = spread(test, 6)
    assert len(picked) == 6 and {q.type for q in picked} == {"single_hop", "two_hop", "comparison"}
    assert spread(test, None) == test and spread(test, 10_000) == test
