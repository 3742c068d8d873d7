"""Lexicons and sentence templates of the toy world, in English and Korean (data only).

Every entity is ``(english, korean)``. Every template is an aligned ``(english, korean)`` pair that
says the same thing in both languages, so a Ko-En bridge pair is one template filled with one fact.

Template slots: ``{s}`` subject person, ``{p}`` second person, ``{o}`` object, ``{d}`` day.
English-only slot forms: ``{a_o}`` object with its indefinite article ("an engineer"), ``{A_o}`` the
same capitalised, ``{O}`` the object capitalised. Korean slots may carry a particle pair,
``{s|은/는}``, filled by :func:`lib.world.korean.fill`.

Word choices are constrained so that substring search is exact (tested in tests/test_toyworld.py):
no Korean name or entity contains another one, and no template text contains one. That is why
there is no 떡볶이 next to 떡, no 치과의사 next to 의사, no names like 수영 (swimming) or 보라 (purple).
"""
from __future__ import annotations

# Korean given names with a romanisation. Both vowel-final (민수, 지호) and consonant-final names
# (지훈, 서연; ㄹ-final 소율, 한별) so every particle shape occurs.
PEOPLE = [
    ("Minsu", "민수"), ("Jiho", "지호"), ("Jihun", "지훈"), ("Seoyeon", "서연"), ("Hyunwoo", "현우"),
    ("Minjun", "민준"), ("Seojun", "서준"), ("Doyun", "도윤"), ("Yejun", "예준"), ("Siwoo", "시우"),
    ("Hajun", "하준"), ("Juwon", "주원"), ("Jiwoo", "지우"), ("Junseo", "준서"), ("Geonwoo", "건우"),
    ("Woojin", "우진"), ("Sunwoo", "선우"), ("Yeonwoo", "연우"), ("Yujun", "유준"), ("Jungwoo", "정우"),
    ("Seungwoo", "승우"), ("Seunghyun", "승현"), ("Junhyuk", "준혁"), ("Jihwan", "지환"), ("Siyun", "시윤"),
    ("Eunwoo", "은우"), ("Yuchan", "유찬"), ("Taeyun", "태윤"), ("Minjae", "민재"), ("Hyunjun", "현준"),
    ("Jisung", "지성"), ("Donghyun", "동현"), ("Jaemin", "재민"), ("Sungmin", "성민"), ("Youngho", "영호"),
    ("Taemin", "태민"), ("Sangwoo", "상우"), ("Jinwoo", "진우"), ("Kyungsoo", "경수"), ("Yongjun", "용준"),
    ("Seoyun", "서윤"), ("Jiyu", "지유"), ("Haeun", "하은"), ("Hayun", "하윤"), ("Minseo", "민서"),
    ("Jia", "지아"), ("Sua", "수아"), ("Jimin", "지민"), ("Chaewon", "채원"), ("Yunseo", "윤서"),
    ("Daeun", "다은"), ("Yeeun", "예은"), ("Soyul", "소율"), ("Yerin", "예린"), ("Subin", "수빈"),
    ("Jiwon", "지원"), ("Yuna", "유나"), ("Harin", "하린"), ("Gaeun", "가은"), ("Chaeeun", "채은"),
    ("Eunseo", "은서"), ("Yena", "예나"), ("Minji", "민지"), ("Sumin", "수민"), ("Yujin", "유진"),
    ("Hyejin", "혜진"), ("Eunji", "은지"), ("Soyeon", "소연"), ("Mijin", "미진"), ("Nayeon", "나연"),
    ("Dain", "다인"), ("Boyoung", "보영"), ("Seyoung", "세영"), ("Eunbyul", "은별"), ("Hanbyul", "한별"),
    ("Dasol", "다솔"), ("Yeseul", "예슬"), ("Jiyul", "지율"), ("Seoyul", "서율"), ("Hangyeol", "한결"),
    ("Minho", "민호"), ("Junho", "준호"), ("Sungho", "성호"), ("Taeho", "태호"), ("Dongwook", "동욱"),
    ("Jaehyun", "재현"), ("Sangmin", "상민"), ("Hyungjun", "형준"), ("Seokjin", "석진"), ("Yoongi", "윤기"),
    ("Namjoon", "남준"), ("Hoseok", "호석"), ("Jungkook", "정국"), ("Taehyung", "태형"), ("Kibum", "기범"),
    ("Jonghyun", "종현"), ("Minhyuk", "민혁"), ("Changmin", "창민"), ("Kyuhyun", "규현"), ("Donghae", "동해"),
    ("Siwon", "시원"), ("Heechul", "희철"), ("Youngmin", "영민"), ("Kwangsoo", "광수"), ("Jaesuk", "재석"),
    ("Myungsoo", "명수"), ("Junha", "준하"), ("Seho", "세호"), ("Woosung", "우성"), ("Byunghun", "병헌"),
    ("Suji", "수지"), ("Jieun", "지은"), ("Taeyeon", "태연"), ("Yoona", "윤아"), ("Hyoyeon", "효연"),
    ("Seohyun", "서현"), ("Hyeri", "혜리"), ("Mina", "민아"), ("Sojin", "소진"), ("Yura", "유라"),
    ("Naeun", "나은"), ("Yeji", "예지"), ("Ryujin", "류진"), ("Chaeryeong", "채령"), ("Jisoo", "지수"),
]

# Object categories of the relations. English forms are what an English answer says
# ("Busan", "doctor", "apples"); the article for jobs and animals is added by the templates.
CATEGORIES = {
    "city": [
        ("Seoul", "서울"), ("Busan", "부산"), ("Daegu", "대구"), ("Incheon", "인천"), ("Gwangju", "광주"),
        ("Daejeon", "대전"), ("Ulsan", "울산"), ("Suwon", "수원"), ("Jeju", "제주"), ("Chuncheon", "춘천"),
        ("Jeonju", "전주"), ("Pohang", "포항"), ("Gangneung", "강릉"), ("Yeosu", "여수"), ("Mokpo", "목포"),
        ("Andong", "안동"),
    ],
    "job": [
        ("doctor", "의사"), ("teacher", "교사"), ("nurse", "간호사"), ("lawyer", "변호사"), ("cook", "요리사"),
        ("officer", "경찰관"), ("firefighter", "소방관"), ("farmer", "농부"), ("pilot", "조종사"),
        ("singer", "가수"), ("painter", "화가"), ("writer", "작가"), ("scientist", "과학자"),
        ("engineer", "엔지니어"), ("journalist", "기자"), ("pharmacist", "약사"),
    ],
    "food": [
        ("apples", "사과"), ("bread", "빵"), ("kimchi", "김치"), ("noodles", "국수"), ("pizza", "피자"),
        ("cheese", "치즈"), ("dumplings", "만두"), ("grapes", "포도"), ("strawberries", "딸기"),
        ("bananas", "바나나"), ("watermelon", "수박"), ("curry", "카레"), ("ramen", "라면"),
        ("cookies", "쿠키"), ("bibimbap", "비빔밥"), ("tofu", "두부"),
    ],
    "animal": [
        ("cat", "고양이"), ("dog", "강아지"), ("rabbit", "토끼"), ("hamster", "햄스터"), ("parrot", "앵무새"),
        ("turtle", "거북이"), ("goldfish", "금붕어"), ("hedgehog", "고슴도치"), ("duck", "오리"),
        ("squirrel", "다람쥐"), ("frog", "개구리"), ("lizard", "도마뱀"), ("owl", "부엉이"), ("goat", "염소"),
    ],
    "sport": [
        ("soccer", "축구"), ("baseball", "야구"), ("basketball", "농구"), ("volleyball", "배구"),
        ("tennis", "테니스"), ("badminton", "배드민턴"), ("golf", "골프"), ("hockey", "하키"),
        ("rugby", "럭비"), ("cricket", "크리켓"), ("handball", "핸드볼"), ("squash", "스쿼시"),
    ],
    "colour": [
        ("red", "빨간색"), ("blue", "파란색"), ("yellow", "노란색"), ("green", "초록색"), ("purple", "보라색"),
        ("white", "흰색"), ("black", "검은색"), ("pink", "분홍색"), ("orange", "주황색"), ("grey", "회색"),
        ("brown", "갈색"),
    ],
}

DAYS = [("Monday", "월요일"), ("Tuesday", "화요일"), ("Wednesday", "수요일"), ("Thursday", "목요일"),
        ("Friday", "금요일"), ("Saturday", "토요일"), ("Sunday", "일요일")]

AGES = list(range(21, 60))

# Relations whose facts can be evaluated: relation -> object category.
RELATION_CATEGORY = {
    "lives_in": "city",
    "works_as": "job",
    "likes_food": "food",
    "has_pet": "animal",
    "plays": "sport",
}
EVAL_RELATIONS = tuple(RELATION_CATEGORY)

# Aligned statement templates per evaluable relation (5 each; the name in different positions).
# English is written without apostrophes or capitalised entity names, so that the clone Korean
# (lib.world.clone) maps it word for word: "the home of Minsu", never "Minsu's home".
FACT_TEMPLATES = {
    "lives_in": [
        ("{s} lives in {o}.", "{s|은/는} {o}에 산다."),
        ("The home of {s} is in {o}.", "{s}의 집은 {o}에 있다."),
        ("{s} moved to {o} and lives there now.", "{s|은/는} {o|으로/로} 이사해서 지금 거기에 산다."),
        ("The city where {s} lives is {o}.", "{s|이/가} 사는 도시는 {o|이다/다}."),
        ("In {o} there is a house where {s} lives.", "{o}에 {s|이/가} 사는 집이 있다."),
    ],
    "works_as": [
        ("{s} works as {a_o}.", "{s|은/는} {o|으로/로} 일한다."),
        ("{s} is {a_o}.", "{s|은/는} {o|이다/다}."),
        ("By profession {s} is {a_o}.", "{s}의 직업은 {o|이다/다}."),
        ("{s} has worked as {a_o} for years.", "{s|은/는} 몇 년째 {o|으로/로} 일하고 있다."),
        ("Every day {s} goes to work as {a_o}.", "{s|은/는} 매일 {o|으로/로} 출근한다."),
    ],
    "likes_food": [
        ("{s} likes {o}.", "{s|은/는} {o|을/를} 좋아한다."),
        ("The favourite food of {s} is {o}.", "{s|이/가} 가장 좋아하는 음식은 {o|이다/다}."),
        ("{s} loves to eat {o}.", "{s|은/는} {o|을/를} 즐겨 먹는다."),
        ("The food that {s} likes most is {o}.", "{s|은/는} {o|을/를} 제일 좋아해요."),
        ("{s} often eats {o}.", "{s|은/는} 자주 {o|을/를} 먹는다."),
    ],
    "has_pet": [
        ("{s} has {a_o} as a pet.", "{s|은/는} {o|을/를} 반려동물로 키운다."),
        ("The pet of {s} is {a_o}.", "{s}의 반려동물은 {o|이다/다}."),
        ("{s} keeps {a_o} at home.", "{s|은/는} 집에서 {o|을/를} 키운다."),
        ("{s} looks after {a_o} every day.", "{s|은/는} 매일 {o|을/를} 돌본다."),
        ("At home {s} has a pet {o}.", "{s}에게는 {o|이/가} 한 마리 있다."),
    ],
    "plays": [
        ("{s} plays {o}.", "{s|은/는} {o|을/를} 한다."),
        ("The favourite sport of {s} is {o}.", "{s|이/가} 가장 좋아하는 운동은 {o|이다/다}."),
        ("{s} plays {o} every week.", "{s|은/는} 매주 {o|을/를} 한다."),
        ("{s} enjoys playing {o}.", "{s|은/는} {o|을/를} 즐긴다."),
        ("{s} is on a {o} team.", "{s|은/는} {o} 팀에서 뛴다."),
    ],
}

# One question per evaluable relation and language; the answer is the bare object form.
QUESTION_TEMPLATES = {
    "lives_in": ("Where does {s} live?", "{s|은/는} 어디에 살아요?"),
    "works_as": ("What is the job of {s}?", "{s}의 직업은 무엇이에요?"),
    "likes_food": ("What food does {s} like?", "{s|은/는} 어떤 음식을 좋아해요?"),
    "has_pet": ("What animal does {s} have?", "{s|은/는} 어떤 동물을 키워요?"),
    "plays": ("Which sport does {s} play?", "{s|은/는} 어떤 운동을 해요?"),
}

# Attributes that are never evaluated: stated about every knowledge and bridge person in both
# languages, so the language never predicts which facts about a person exist.
ATTRIBUTE_TEMPLATES = {
    "likes_colour": [
        ("The favourite colour of {s} is {o}.", "{s|이/가} 좋아하는 색은 {o|이다/다}."),
        ("{s} likes the colour {o}.", "{s|은/는} {o|을/를} 좋아한다."),
        ("{s} often wears {o} clothes.", "{s|은/는} {o} 옷을 자주 입는다."),
    ],
    "age": [
        ("{s} is {o} years old.", "{s|은/는} {o}살이다."),
        ("{s} turned {o} this year.", "{s|은/는} 올해 {o}살이 되었다."),
    ],
}

# Events between two people (not facts anybody is asked about). Ghost people appear only here.
PAIR_TEMPLATES = [
    ("{s} met {p}.", "{s|은/는} {p|과/와} 만났다."),
    ("{s} met {p} on {d}.", "{s|은/는} {d}에 {p|과/와} 만났다."),
    ("{s} and {p} are friends.", "{s|과/와} {p|은/는} 친구다."),
    ("{s} called {p} on {d}.", "{s|은/는} {d}에 {p}에게 전화했다."),
    ("{s} wrote a letter to {p}.", "{s|은/는} {p}에게 편지를 썼다."),
    ("{s} had lunch with {p}.", "{s|은/는} {p|과/와} 점심을 먹었다."),
    ("{s} studied with {p} on {d}.", "{s|은/는} {d}에 {p|과/와} 공부했다."),
]

# Sentences about an entity alone, so every entity name is seen in both languages (never
# sentence-initial: a capitalised form would be another word).
CATEGORY_TEMPLATES = {
    "city": [("There is a city called {o}.", "{o|은/는} 한국의 도시다."),
             ("Many people live in {o}.", "{o}에는 많은 사람이 산다.")],
    "job": [("Being {a_o} is a job.", "{o|은/는} 직업이다.")],
    "food": [("People eat {o}.", "사람들은 {o|을/를} 먹는다.")],
    "animal": [("Everyone knows that {a_o} is an animal.", "{o|은/는} 동물이다.")],
    "sport": [("People play {o}.", "{o|은/는} 운동이다.")],
    "colour": [("Everyone knows that {o} is a colour.", "{o|은/는} 색이다.")],
}

# Instruction-tuning templates: (instruction, input) per language; outputs are built by the world.
# "translate" is (into Korean, into English): an English record asks for Korean and vice versa.
INSTRUCTION_TEMPLATES = {
    "describe": ("Tell me about {s}.", "{s}에 대해 알려 주세요."),
    "translate": ("Translate the sentence into Korean.", "다음 문장을 영어로 번역하세요."),
    "translate_en": "Translate the sentence into English.",
}

# Verbs of the English templates: the clone_sov Korean puts them at the end of the sentence.
VERBS = frozenset("""lives live moved is are works worked has have goes likes like loves eat eats
    keeps looks plays play enjoys does met called wrote had studied turned wears know knows
    Tell Translate""".split())

# Prompt formats of the multiple-choice evaluation (kollm_evaluation's arc / ko_arc prompts).


def with_article(word: str) -> str:
    """``word`` with its English indefinite article: 'a doctor', 'an engineer', 'an owl'."""
    return ("an " if word[:1].lower() in "aeiou" else "a ") + word


def capitalised(text: str) -> str:
    """``text`` with its first letter upper-cased (sentence starts)."""
    return text[:1].upper() + text[1:]
